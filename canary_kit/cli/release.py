"""`canary set-weight`, `promote`, `rollback`, `deploy`, `finalize` and `shadow`: change what each version serves."""

from __future__ import annotations

import json
import re
from typing import Annotated

import typer

from canary_kit.cli.options import Reason, stack_of
from canary_kit.core.errors import CanaryError


def change(ctx: typer.Context, weight: int, reason: str, event: str) -> None:
    from canary_kit.observe.views import change_line
    from canary_kit.steer.control import set_weight

    before, after = set_weight(stack_of(ctx).target(), weight, reason, event=event)
    typer.echo(change_line(before, after))


def set_weight_command(
    ctx: typer.Context,
    weight: Annotated[int, typer.Argument(min=0, max=100, help="percent of requests for green, 0-100")],
    reason: Reason = "",
) -> None:
    """Send WEIGHT percent of requests to green and the rest to blue."""
    change(ctx, weight, reason, "set-weight")


def promote(ctx: typer.Context, reason: Reason = "") -> None:
    """Send every request to green."""
    change(ctx, 100, reason, "promote")


def rollback(ctx: typer.Context, reason: Reason = "") -> None:
    """Send every request to blue (green gets 0%)."""
    change(ctx, 0, reason, "rollback")


def deploy(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="the version to ship as green, e.g. v1.2.0")],
    timeout: Annotated[
        float | None, typer.Option(min=1, max=600, help="seconds it has to become ready [default: 60; 180 compose]")
    ] = None,
    reason: Reason = "",
) -> None:
    """Start VERSION as green next to blue (green at 0% until it is ready), then replace the old green."""
    from canary_kit.core.config import VERSION
    from canary_kit.steer.release import deploy as run_deploy

    if not re.fullmatch(VERSION, version):
        raise CanaryError(f"version must look like v1.2.0, got {version!r}")
    state = run_deploy(stack_of(ctx).target(), version, reason, typer.echo, timeout)
    typer.echo(f"green serves {state.green_version} at 0% (blue {state.blue_version} 100%); next: canary rollout")


def finalize(ctx: typer.Context, reason: Reason = "") -> None:
    """After promote: blue takes over the promoted version and green is freed for the next deploy."""
    from canary_kit.steer.release import finalize as run_finalize

    state = run_finalize(stack_of(ctx).target(), reason, typer.echo)
    typer.echo(f"blue serves {state.blue_version} at 100%; green is free for the next `canary deploy`")


def shadow(
    ctx: typer.Context,
    seconds: Annotated[float, typer.Option(min=1, max=3600, help="how long to mirror")] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Mirror every /predict to green while blue answers all clients; compare their predictions."""
    from canary_kit.rollout.shadow import require_shadowable, run_shadow
    from canary_kit.steer.control import current

    target = stack_of(ctx).target()
    require_shadowable(current(target))
    typer.echo(f"shadow: blue answers every client, green gets a copy of each /predict for {seconds:.0f}s ...")
    report = run_shadow(target, seconds, typer.echo)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    agreement = "-" if report["agreement"] is None else f"{report['agreement']:.2%}"
    typer.echo(
        f"mirrored {report['requests_mirrored']} requests ({report['rows_compared']} rows): agreement {agreement}, "
        f"green failed copies {report['green_failed_copies']}"
    )
    typer.echo(f"class shares  blue {report['class_shares']['blue']}  green {report['class_shares']['green']}")
    latency = report["latency_p50_ms"]
    typer.echo(f"latency p50   blue {latency['blue']} ms  green {latency['green']} ms")
