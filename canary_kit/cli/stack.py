"""`canary up`, `down`, `status` and `history`: run the local stack, stop it, and read what a stack does and did."""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Annotated

import typer

from canary_kit.cli.options import STOP_SIGNALS, StateDir, settings_from, stack_of, stop_once
from canary_kit.stacks.targets import local_state_dir


def up(
    port: Annotated[int | None, typer.Option(help="nginx's public port [default: 8000]")] = None,
    green_weight: Annotated[
        int | None, typer.Option(help="percent of traffic to green [default: the last split, or 10]")
    ] = None,
    from_bentos: Annotated[bool, typer.Option("--from-bentos", help="serve the built Bentos, not service.py")] = False,
    workers: Annotated[int | None, typer.Option(help="BentoML workers per version [default: 1]")] = None,
    state_dir: StateDir = None,
) -> None:
    """Start blue, green and nginx; restart whichever dies; stay in the foreground until Ctrl-C, then stop them all."""
    from canary_kit.stacks.local import Stack
    from canary_kit.stacks.supervise import supervise
    from canary_kit.stacks.targets import LocalTarget
    from canary_kit.steer.control import record

    settings = settings_from(
        port=port,
        green_weight=green_weight,
        workers=workers,
        state_dir=state_dir,
        source="bento" if from_bentos else None,
    )
    for sig in STOP_SIGNALS:
        signal.signal(sig, stop_once)
    stack = Stack(settings)
    stack.check()  # refuse before printing anything else
    typer.echo("starting the canary stack ...")
    try:
        state = stack.start().started_state()
        record(LocalTarget(settings.state_dir), "up", state, state, "canary up")
        took = time.monotonic() - stack.started_at
        typer.echo(f"ready in {took:.1f}s: {settings.url}  (green gets {state.green_weight}%)")
        typer.echo(f"  blue   {state.blue_version}  {settings.slot_url('blue')}")
        green = f"{state.green_version}  {settings.slot_url(state.green_slot)}" if state.green_version else "free"
        typer.echo(f"  green  {green}")
        typer.echo(f"  state  {settings.state_dir}   (Ctrl-C stops them all)")
        logs = settings.state_dir / "logs"
        supervise(stack, lambda line: typer.echo(f"{line} (logs: {logs})", err=True))
    except KeyboardInterrupt:
        typer.echo("stopping ...")
    finally:
        stack.stop()
    typer.echo("stopped")


def down(state_dir: StateDir = None) -> None:
    """Stop the local stack: its `canary up`, or what a killed one left running (from the state folder)."""
    from canary_kit.stacks.supervise import down as stop_stack

    folder = local_state_dir(state_dir)
    done = stop_stack(folder)
    typer.echo("\n".join(done) if done else f"nothing of a canary stack runs from {folder}")


def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="refresh in place until Ctrl-C")] = False,
    interval: Annotated[float, typer.Option(min=0.5, max=60, help="seconds between refreshes (--watch)")] = 2.0,
) -> None:
    """The split nginx applies, both versions, their health, requests, errors and latency since the last change, and
    the running (or last) rollout: each gate's evidence at its last look and why each step ended."""
    from canary_kit.observe.views import rollout_lines, status_lines
    from canary_kit.rollout import live
    from canary_kit.steer.control import status as read_status

    target = stack_of(ctx).target()
    if watch:  # Ctrl-C stops it even when started with SIGINT ignored (a background job of a script)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            report = read_status(target)
            report["rollout"] = live.read(target.state_dir)  # the last rollout: shouted if it stands half-way
            if as_json:
                typer.echo(json.dumps(report, indent=2, default=str))
            else:
                lines, warnings = status_lines(report)
                lines += rollout_lines(report["rollout"])
                if watch:
                    lines.append(f"(every {interval:g}s; Ctrl-C stops)")
                    typer.echo("\x1b[H\x1b[2J" if sys.stdout.isatty() else "", nl=False)
                typer.echo("\n".join(lines))
                for warning in warnings:
                    typer.echo(warning, err=True)
            if not watch:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        if not watch:
            raise


def history(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option(min=1, help="only the last LIMIT changes")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
) -> None:
    """What served when: starts, deploys, weight changes, promotions, rollbacks, finalizations, and why."""
    from canary_kit.observe.views import history_lines, read_history

    folder = stack_of(ctx).folder()
    entries = read_history(folder / "changes.log", limit)
    if as_json:
        typer.echo("\n".join(json.dumps(e) for e in entries))
    elif not entries:
        typer.echo(f"no changes recorded in {folder / 'changes.log'}")
    else:
        typer.echo("\n".join(history_lines(entries)))
