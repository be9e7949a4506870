"""What `canary`'s commands share: the options naming the stack to act on (--state-dir, --compose, --compose-file),
written once and added to every command that acts on a stack, and the settings built from options.

    @app.command(cls=StackCommand)
    def promote(ctx: typer.Context, reason: Reason = "") -> None:
        target = stack_of(ctx).target()       # opened when first asked for, once per command
"""

from __future__ import annotations

import inspect
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from typer.core import TyperCommand

from canary_kit.core.config import Settings
from canary_kit.core.errors import CanaryError, describe
from canary_kit.core.target import Target
from canary_kit.stacks.targets import local_state_dir, open_target

StateDir = Annotated[Path | None, typer.Option("--state-dir", help="runtime folder [default: .canary]")]
Reason = Annotated[str, typer.Option("--reason", "-m", help="why, for the change log")]
COMPOSE_FILE = Path("docker-compose.yml")


@dataclass
class StackChoice:
    """The stack the options name: the local one (through its state folder) or the compose one."""

    state_dir: Path | None = None
    compose: bool = False
    compose_file: Path = COMPOSE_FILE
    opened: Target | None = field(default=None, repr=False)

    def target(self) -> Target:
        """The stack, opened on first use (a CanaryError when it does not run)."""
        if self.opened is None:
            self.opened = self.open()
        return self.opened

    def open(self) -> Target:
        """The stack, opened again (the dashboard reopens the local one at each refresh)."""
        return open_target(self.state_dir, self.compose, self.compose_file)

    def folder(self) -> Path:
        """The stack's state folder: the local one needs no running stack to be found."""
        return self.target().state_dir if self.compose else local_state_dir(self.state_dir)


def _stack_options(
    state_dir: StateDir = None,
    compose: Annotated[
        bool, typer.Option("--compose", help="act on the docker compose stack, not the local one")
    ] = False,
    compose_file: Annotated[Path, typer.Option(help="compose file of the stack (with --compose)")] = COMPOSE_FILE,
) -> None:
    """The stack options, declared as typer declares any command's (StackCommand takes them from here)."""


def _built_options() -> list:
    template = typer.Typer(add_completion=False)
    template.command()(_stack_options)
    names = list(inspect.signature(_stack_options).parameters)
    return [param for param in typer.main.get_command(template).params if param.name in names]


class StackCommand(TyperCommand):
    """A command that acts on a stack: the stack options follow its own, and what they name is `stack_of(ctx)`."""

    OPTIONS = tuple(inspect.signature(_stack_options).parameters)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_built_options())

    def invoke(self, ctx: Any) -> Any:  # a click Context (typer's own copy of click)
        ctx.obj = StackChoice(**{name: ctx.params.pop(name) for name in self.OPTIONS})
        return super().invoke(ctx)


def stack_of(ctx: typer.Context) -> StackChoice:
    """The stack a StackCommand's options name."""
    if not isinstance(ctx.obj, StackChoice):
        raise TypeError(f"{ctx.command.name} is not a StackCommand")
    return ctx.obj


def settings_from(**given: Any) -> Settings:
    """Settings from CANARY_* variables, overridden by the options actually given; bad values are CanaryErrors."""
    try:
        return Settings(**{key: value for key, value in given.items() if value is not None})
    except ValidationError as exc:
        raise CanaryError(f"invalid setting: {describe(exc)}") from None


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, a closed terminal


def stop_once(signum: int, frame: object) -> None:
    """The first stop signal unwinds the command as Ctrl-C does (also mid-start); later ones must not interrupt the
    cleanup."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt
