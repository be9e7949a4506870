"""`canary`: run the canary stack and steer its traffic. Thin commands (the modules beside this one); errors become
one line and exit code 1 (`--debug` shows the traceback behind the line)."""

from __future__ import annotations

import signal
import subprocess
import sys
import traceback
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from canary_kit.cli import init, release, rollout, stack
from canary_kit.cli.k8s import k8s_app
from canary_kit.cli.options import StackCommand, stop_once
from canary_kit.core.errors import CanaryError
from canary_kit.observe.views import clean


class CanaryGroup(TyperGroup):
    """The edge: a CanaryError or a usage error (bad value, unknown command) becomes one line and exit code 1."""

    debug = False  # --debug: the traceback too

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        self.debug = False
        try:
            result = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
            code = result if isinstance(result, int) else 0
        except (CanaryError, typer.TyperException, OSError, subprocess.SubprocessError) as exc:
            if self.debug:
                traceback.print_exception(exc, file=sys.stderr)
            message = exc.format_message() if isinstance(exc, typer.TyperException) else str(exc)
            typer.echo(f"error: {clean(message)}", err=True)  # a value the user gave, never raw control characters
            code = 1
        except typer.Abort:
            typer.echo("aborted", err=True)
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=CanaryGroup,
    help="Canary deployments for a BentoML service: blue (stable) and green (candidate) behind nginx.",
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="on an error, show its traceback too")] = False,
) -> None:
    """Run the local canary stack and steer its traffic."""
    if isinstance(ctx.command, CanaryGroup):
        ctx.command.debug = debug
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


# In the order `canary --help` lists them. A StackCommand takes --state-dir, --compose and --compose-file.
app.command()(init.init)
app.command()(stack.up)
app.command()(stack.down)
app.command("set-weight", cls=StackCommand, context_settings={"ignore_unknown_options": True})(  # "-1" is a value
    release.set_weight_command
)
app.command(cls=StackCommand)(release.promote)
app.command(cls=StackCommand)(release.rollback)
app.command(cls=StackCommand)(stack.status)
app.command(cls=StackCommand)(stack.history)
app.command(cls=StackCommand)(release.deploy)
app.command(cls=StackCommand)(release.finalize)
app.command(cls=StackCommand)(release.shadow)
app.command(cls=StackCommand)(rollout.rollout)
app.command(cls=StackCommand)(rollout.labels)
app.command(cls=StackCommand)(rollout.quality)
app.command(cls=StackCommand)(rollout.dashboard)
app.add_typer(k8s_app, name="k8s")


def main() -> None:
    # `kill` or a closed terminal unwinds a command as Ctrl-C does: a deploy stops the version it was starting.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop_once)
    app()


if __name__ == "__main__":
    main()
