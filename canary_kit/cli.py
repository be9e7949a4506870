"""`canary`: run the canary stack and steer its traffic. Thin commands; errors become one line and exit code 1."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from canary_kit.config import COLORS, CanaryError, Settings


class CanaryGroup(TyperGroup):
    """The edge: a CanaryError from any command becomes one line on stderr and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CanaryError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=CanaryGroup,
    help="Canary deployments for the BentoML penguin classifier: blue (stable) and green (candidate) behind nginx.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)



@app.callback()
def _root() -> None:
    """Run the local canary stack and steer its traffic."""


StateDir = Annotated[Optional[Path], typer.Option("--state-dir", help="runtime folder [default: .canary]")]


def settings_from(**given) -> Settings:
    """Settings from CANARY_* variables, overridden by the options actually given; bad values are CanaryErrors."""
    try:
        return Settings(**{key: value for key, value in given.items() if value is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise CanaryError(f"invalid setting: {problems}") from None


@app.command()
def up(
    port: Annotated[Optional[int], typer.Option(help="nginx's public port [default: 8000]")] = None,
    green_weight: Annotated[Optional[int], typer.Option(help="percent of traffic to green [default: 10]")] = None,
    from_bentos: Annotated[bool, typer.Option("--from-bentos", help="serve the built Bentos, not service.py")] = False,
    state_dir: StateDir = None,
) -> None:
    """Start blue, green and nginx; stay in the foreground until Ctrl-C, then stop all three."""
    from canary_kit.stack import Stack  # keeps `canary --help` fast

    settings = settings_from(
        port=port, green_weight=green_weight, state_dir=state_dir, source="bento" if from_bentos else None
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    typer.echo(f"starting blue {settings.blue_version}, green {settings.green_version} and nginx ...")
    with Stack(settings) as stack:
        took = time.monotonic() - stack.started_at
        typer.echo(f"ready in {took:.1f}s: {settings.url}  (green gets {settings.green_weight}%)")
        for color in COLORS:
            typer.echo(f"  {color:<5} {settings.version(color)}  {settings.backend_url(color)}")
        typer.echo(f"  state  {settings.state_dir}   (Ctrl-C stops all three)")
        reported: set[str] = set()
        while not stop.wait(0.5):
            for name, code in stack.exited():
                if name not in reported:
                    reported.add(name)
                    typer.echo(f"{name} exited with code {code}; see {settings.state_dir / 'logs' / name}.log", err=True)
        typer.echo("stopping ...")
    typer.echo("stopped")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
