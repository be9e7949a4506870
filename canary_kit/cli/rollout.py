"""`canary rollout`, `labels`, `quality` and `dashboard`: ship green step by step on its figures, and judge the
versions on the true classes sent back."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from canary_kit.cli.options import stack_of
from canary_kit.core.errors import CanaryError
from canary_kit.policy import registry
from canary_kit.policy.registry import GATES


def rollout(
    ctx: typer.Context,
    spec: Annotated[Path | None, typer.Option(help="rollout spec YAML [default: the committed one]")] = None,
    steps: Annotated[str | None, typer.Option(help="green weights, e.g. 10,25,50,100")] = None,
    mode: Annotated[
        str | None, typer.Option(help="sequential (a step ends on evidence) or fixed (held windows, thresholds)")
    ] = None,
    min_step_seconds: Annotated[float | None, typer.Option(help="sequential: the shortest a step lasts")] = None,
    max_step_seconds: Annotated[
        float | None, typer.Option(help="sequential: a step still without every verdict then pauses")
    ] = None,
    hold: Annotated[float | None, typer.Option(help="fixed: seconds to hold each window")] = None,
    min_requests: Annotated[int | None, typer.Option(help="green requests the HTTP gates need")] = None,
    min_rows: Annotated[int | None, typer.Option(help="rows each version must predict for the quality gates")] = None,
    min_labels: Annotated[int | None, typer.Option(help="labelled rows per version the accuracy gate needs")] = None,
    label_wait: Annotated[float | None, typer.Option(help="seconds a step waits for labels")] = None,
    dry_run: Annotated[
        list[str] | None, typer.Option("--dry-run", help="measure and report this gate, never act on it (repeat)")
    ] = None,
    on_failure: Annotated[str | None, typer.Option(help="after the failed checks: rollback or pause")] = None,
    max_failed_checks: Annotated[int | None, typer.Option(help="failed checks before on_failure")] = None,
    max_inconclusive: Annotated[int | None, typer.Option(help="inconclusive windows before pausing")] = None,
    shadow_seconds: Annotated[float | None, typer.Option(help="shadow phase before going live")] = None,
    **gates: float | None,
) -> None:
    """Walk green through the steps, judging each on its server and model figures; roll back or pause on failure."""
    from canary_kit.policy.spec import load_spec
    from canary_kit.rollout import run as plan
    from canary_kit.rollout.report import write_report
    from canary_kit.rollout.shadow import run_shadow
    from canary_kit.steer.control import current, require_green

    try:
        weights = None if steps is None else [int(s) for s in steps.split(",")]
    except ValueError:
        raise CanaryError(f"--steps must be comma-separated whole numbers, got {steps!r}") from None
    overrides = dict(
        steps=weights,
        mode=mode,
        min_step_seconds=min_step_seconds,
        max_step_seconds=max_step_seconds,
        hold_seconds=hold,
        min_requests=min_requests,
        min_rows=min_rows,
        **gates,  # each gate's threshold, by its name (registry.py: the gates with an option)
        min_labels=min_labels,
        label_wait_seconds=label_wait,
        dry_run=dry_run,
        on_failure=on_failure,
        max_failed_checks=max_failed_checks,
        max_inconclusive=max_inconclusive,
        shadow_seconds=shadow_seconds,
    )
    chosen = load_spec(spec, overrides)
    target = stack_of(ctx).target()
    require_green(current(target))
    task = target.prediction_metrics.task
    judged = ", ".join(
        f"{name} {gate.threshold:g}{' (dry-run)' if gate.dry_run else ''}"
        for name, gate in chosen.gates.items()
        if chosen.judged(name, task)
    )
    if chosen.mode == "sequential":
        how = (
            f"sequential, steps of {chosen.min_step_seconds:g}-{chosen.max_step_seconds:g}s, family error rate "
            f"at most {chosen.family_alpha(task):.3g}"
        )
    else:
        how = f"fixed, hold {chosen.hold_seconds:.0f}s"
    typer.echo(f"rollout: steps {chosen.steps}, {how}, on failure {chosen.on_failure}; gates: {judged}")
    try:
        result = plan.run(target, chosen, typer.echo, run_shadow)
    except KeyboardInterrupt:
        from canary_kit.steer.control import split_of

        typer.echo(f"interrupted: green stays at {split_of(target)[0]}%; `canary rollback` is always safe", err=True)
        raise typer.Exit(130) from None
    report = write_report(result, target.state_dir / "rollouts")
    typer.echo(f"{result.outcome}: {result.reason}; green at {result.final_weight}%  (report: {report})")
    if result.outcome != "promoted":
        raise typer.Exit(2 if result.outcome == "paused" else 1)


def _gate_options() -> None:
    """`canary rollout`'s options: its own, and one per gate that declares a flag (registry.py), after --min-rows."""
    own = [p for p in _ROLLOUT.parameters.values() if p.kind is not p.VAR_KEYWORD]
    at = next(i for i, p in enumerate(own) if p.name == "min_rows") + 1
    gates = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[float | None, typer.Option(help=info.flag)],
        )
        for name, info in GATES.items()
        if info.flag is not None
    ]
    keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[at:]]
    parameters = [*own[:at], *gates, *keyword]
    rollout.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
    rollout.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}


_ROLLOUT = inspect.signature(rollout, eval_str=True)  # as written, before the gates' options are added
_gate_options()
registry.on_change(_gate_options)


def labels(
    ctx: typer.Context,
    file: Annotated[
        str, typer.Argument(help="CSV or JSON lines with request_id, label and optionally row; - for stdin")
    ],
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="write the valid lines even if some are refused")
    ] = False,
) -> None:
    """Send the true classes back: join each label to the answer (request id, row) and the version that gave it."""
    from canary_kit.observe import labels as labelling
    from canary_kit.observe import ledger, ledger_queries

    data = labelling.read(file, sys.stdin.buffer)  # refused past its size cap, before it is read whole
    target = stack_of(ctx).target()
    with ledger.connect(target.state_dir) as conn:
        ledger.catch_up(target, conn, target.retention)
        task = target.prediction_metrics.task
        parsed = labelling.parse(
            data, ledger_queries.model_classes(target, conn) if task == "classification" else set(), task
        )
        labelling.check_rows(conn, parsed)
        for line, why in parsed.refused[:20]:
            typer.echo(f"line {line}: {why}", err=True)
        if len(parsed.refused) > 20:
            typer.echo(f"... and {len(parsed.refused) - 20} more refused lines", err=True)
        if parsed.refused and not skip_bad:
            lines = f"{len(parsed.refused)} refused line{'s' if len(parsed.refused) > 1 else ''}"
            raise CanaryError(f"{lines}: nothing written (fix them, or --skip-bad)")
        applied = labelling.apply(conn, parsed.labels)
    joined = sum(applied.joined.values())
    typer.echo(
        f"joined {joined} labels ({sum(applied.replaced.values())} replacing earlier ones), "
        f"unknown {len(applied.unknown)} (no such answer), refused {len(parsed.refused)}"
    )
    for version in sorted(applied.joined):
        typer.echo(f"  {version}: {applied.joined[version]} joined, {applied.replaced[version]} replaced")
    if applied.unknown:
        shown = ", ".join(f"line {u.line} ({u.request_id})" for u in applied.unknown[:5])
        typer.echo(f"  unknown: {shown}{' ...' if len(applied.unknown) > 5 else ''}")


def quality(
    ctx: typer.Context,
    since: Annotated[
        str | None, typer.Option(help="answers since an ISO time, a duration (30m, 2h, 7d) or `change`")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Accuracy per version on the labels sent back, with 95% intervals, confusion matrices and green - blue."""
    from canary_kit.observe import quality as labelled
    from canary_kit.observe.views import quality_lines, read_history
    from canary_kit.steer.control import current

    target = stack_of(ctx).target()
    history = read_history(target.state_dir / "changes.log", 1)
    moment = labelled.since_time(since, history[-1].get("time") if history else None)
    state = current(target)
    report = labelled.quality_report(target, {"blue": state.blue_version, "green": state.green_version}, moment)
    typer.echo(json.dumps(report, indent=2) if as_json else "\n".join(quality_lines(report)))


def dashboard(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 8300,
    host: Annotated[
        str, typer.Option(help="address to listen on; beyond loopback, reading needs the token too")
    ] = "127.0.0.1",
) -> None:
    """A live page of both versions (split, health, requests/s, 5xx, p50/p99, predictions, the rollout's gates,
    history) with set-weight, promote, rollback and pause/abort of a running rollout. Needs the token it prints
    (or CANARY_DASHBOARD_TOKEN) for every action."""
    from canary_kit.dashboard.server import serve

    where = stack_of(ctx)
    folder = None if where.compose else where.folder()
    # The local stack is reopened at each tick and action (it tells at once when the stack stops); compose's is
    # opened once.
    serve(where.target if where.compose else where.open, folder, host, port, typer.echo)
