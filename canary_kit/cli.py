"""`canary`: run the canary stack and steer its traffic. Thin commands; errors become one line and exit code 1."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from canary_kit.config import CanaryError, Settings, describe


class CanaryGroup(TyperGroup):
    """The edge: a CanaryError or a usage error (bad value, unknown command) becomes one line and exit code 1."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
            code = result if isinstance(result, int) else 0
        except (CanaryError, typer.TyperException, OSError, subprocess.SubprocessError) as exc:
            message = exc.format_message() if isinstance(exc, typer.TyperException) else str(exc)
            typer.echo(f"error: {message}", err=True)
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
def _root(ctx: typer.Context) -> None:
    """Run the local canary stack and steer its traffic."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


StateDir = Annotated[Optional[Path], typer.Option("--state-dir", help="runtime folder [default: .canary]")]


def settings_from(**given) -> Settings:
    """Settings from CANARY_* variables, overridden by the options actually given; bad values are CanaryErrors."""
    try:
        return Settings(**{key: value for key, value in given.items() if value is not None})
    except ValidationError as exc:
        raise CanaryError(f"invalid setting: {describe(exc)}") from None


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, a closed terminal


def _stop_once(signum, frame) -> None:
    """The first stop signal unwinds `canary up` (also mid-start); later ones must not interrupt the cleanup."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


@app.command()
def up(
    port: Annotated[Optional[int], typer.Option(help="nginx's public port [default: 8000]")] = None,
    green_weight: Annotated[
        Optional[int], typer.Option(help="percent of traffic to green [default: the last split, or 10]")
    ] = None,
    from_bentos: Annotated[bool, typer.Option("--from-bentos", help="serve the built Bentos, not service.py")] = False,
    workers: Annotated[Optional[int], typer.Option(help="BentoML workers per version [default: 1]")] = None,
    state_dir: StateDir = None,
) -> None:
    """Start blue, green and nginx; restart whichever dies; stay in the foreground until Ctrl-C, then stop them all."""
    from canary_kit.control import record
    from canary_kit.stack import Stack
    from canary_kit.supervise import Supervisor
    from canary_kit.targets import LocalTarget

    settings = settings_from(
        port=port,
        green_weight=green_weight,
        workers=workers,
        state_dir=state_dir,
        source="bento" if from_bentos else None,
    )
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop_once)
    stack = Stack(settings)
    stack.check()  # refuse before printing anything else
    typer.echo("starting the canary stack ...")
    try:
        stack.start()
        state = stack.state
        record(LocalTarget(settings.state_dir), "up", state, state, "canary up")
        typer.echo(f"ready in {time.monotonic() - stack.started_at:.1f}s: {settings.url}  (green gets {state.green_weight}%)")
        typer.echo(f"  blue   {state.blue_version}  {settings.slot_url('blue')}")
        green = f"{state.green_version}  {settings.slot_url(state.green_slot)}" if state.green_version else "free"
        typer.echo(f"  green  {green}")
        typer.echo(f"  state  {settings.state_dir}   (Ctrl-C stops them all)")
        logs = settings.state_dir / "logs"
        supervisor = Supervisor(stack, lambda line: typer.echo(f"{line} (logs: {logs})", err=True))
        while True:
            time.sleep(0.25)
            supervisor.tick()
    except KeyboardInterrupt:
        typer.echo("stopping ...")
    finally:
        stack.stop()
    typer.echo("stopped")


@app.command()
def down(state_dir: StateDir = None) -> None:
    """Stop the local stack: its `canary up`, or what a killed one left running (from the state folder)."""
    from canary_kit.supervise import down as stop_stack

    folder = local_state_dir(state_dir)
    done = stop_stack(folder)
    typer.echo("\n".join(done) if done else f"nothing of a canary stack runs from {folder}")


Compose = Annotated[bool, typer.Option("--compose", help="act on the docker compose stack, not the local one")]
ComposeFile = Annotated[Path, typer.Option(help="compose file of the stack (with --compose)")]
Reason = Annotated[str, typer.Option("--reason", "-m", help="why, for the change log")]


def target_for(state_dir: Optional[Path], compose: bool, compose_file: Path):
    """The stack to act on: the local one (found through its state folder) or the compose one."""
    from canary_kit.targets import ComposeTarget, LocalTarget

    if compose:
        return ComposeTarget(compose_file, os.environ.get("CANARY_COMPOSE_CMD") or compose_command())
    return LocalTarget(local_state_dir(state_dir))


def local_state_dir(state_dir: Optional[Path]) -> Path:
    """The local stack's state folder: --state-dir, else $CANARY_STATE_DIR, else .canary."""
    return (state_dir or Path(os.environ.get("CANARY_STATE_DIR", ".canary"))).expanduser().absolute()


def compose_command() -> str:
    """Compose v2 (`docker compose`) where it answers, else v1's `docker-compose`."""
    try:
        v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        v2 = False
    return "docker compose" if v2 or shutil.which("docker-compose") is None else "docker-compose"


def change(weight: int, reason: str, state_dir: Optional[Path], compose: bool, compose_file: Path, event: str) -> None:
    from canary_kit.control import set_weight

    from canary_kit.views import change_line

    before, after = set_weight(target_for(state_dir, compose, compose_file), weight, reason, event=event)
    typer.echo(change_line(before, after))


@app.command("set-weight", context_settings={"ignore_unknown_options": True})  # so "-1" is a value
def set_weight_command(
    weight: Annotated[int, typer.Argument(min=0, max=100, help="percent of requests for green, 0-100")],
    reason: Reason = "",
    state_dir: StateDir = None,
    compose: Compose = False,
    compose_file: ComposeFile = Path("docker-compose.yml"),
) -> None:
    """Send WEIGHT percent of requests to green and the rest to blue."""
    change(weight, reason, state_dir, compose, compose_file, "set-weight")


@app.command()
def promote(
    reason: Reason = "",
    state_dir: StateDir = None,
    compose: Compose = False,
    compose_file: ComposeFile = Path("docker-compose.yml"),
) -> None:
    """Send every request to green."""
    change(100, reason, state_dir, compose, compose_file, "promote")


@app.command()
def rollback(
    reason: Reason = "",
    state_dir: StateDir = None,
    compose: Compose = False,
    compose_file: ComposeFile = Path("docker-compose.yml"),
) -> None:
    """Send every request to blue (green gets 0%)."""
    change(0, reason, state_dir, compose, compose_file, "rollback")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="refresh in place until Ctrl-C")] = False,
    interval: Annotated[float, typer.Option(min=0.5, max=60, help="seconds between refreshes (--watch)")] = 2.0,
    state_dir: StateDir = None,
    compose: Compose = False,
    compose_file: ComposeFile = Path("docker-compose.yml"),
) -> None:
    """The split nginx applies, both versions, their health, and requests, errors and latency since the last change."""
    from canary_kit.control import status as read_status
    from canary_kit.views import status_lines

    target = target_for(state_dir, compose, compose_file)
    try:
        while True:
            report = read_status(target)
            if as_json:
                typer.echo(json.dumps(report, indent=2))
            else:
                lines, warnings = status_lines(report)
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


@app.command()
def history(
    limit: Annotated[Optional[int], typer.Option(min=1, help="only the last LIMIT changes")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
    state_dir: StateDir = None,
    compose: Compose = False,
    compose_file: ComposeFile = Path("docker-compose.yml"),
) -> None:
    """What served when: starts, deploys, weight changes, promotions, rollbacks, finalizations, and why."""
    from canary_kit.views import history_lines, read_history

    folder = target_for(state_dir, compose, compose_file).state_dir if compose else local_state_dir(state_dir)
    entries = read_history(folder / "changes.log", limit)
    if as_json:
        typer.echo("\n".join(json.dumps(e) for e in entries))
    elif not entries:
        typer.echo(f"no changes recorded in {folder / 'changes.log'}")
    else:
        typer.echo("\n".join(history_lines(entries)))


@app.command()
def deploy(
    version: Annotated[str, typer.Argument(help="the version to ship as green, e.g. v1.2.0")],
    timeout: Annotated[
        Optional[float], typer.Option(min=1, max=600, help="seconds it has to become ready [default: 60; 180 compose]")
    ] = None,
    reason: Reason = "",
    state_dir: StateDir = None,
    compose: Compose = False,
    compose_file: ComposeFile = Path("docker-compose.yml"),
) -> None:
    """Start VERSION as green next to blue (green at 0% until it is ready), then replace the old green."""
    from canary_kit.config import VERSION
    from canary_kit.release import deploy as run_deploy

    if not re.fullmatch(VERSION, version):
        raise CanaryError(f"version must look like v1.2.0, got {version!r}")
    state = run_deploy(target_for(state_dir, compose, compose_file), version, reason, typer.echo, timeout)
    typer.echo(f"green serves {state.green_version} at 0% (blue {state.blue_version} 100%); next: canary rollout")


@app.command()
def finalize(
    reason: Reason = "",
    state_dir: StateDir = None,
    compose: Compose = False,
    compose_file: ComposeFile = Path("docker-compose.yml"),
) -> None:
    """After promote: blue takes over the promoted version and green is freed for the next deploy."""
    from canary_kit.release import finalize as run_finalize

    state = run_finalize(target_for(state_dir, compose, compose_file), reason, typer.echo)
    typer.echo(f"blue serves {state.blue_version} at 100%; green is free for the next `canary deploy`")


@app.command()
def shadow(
    seconds: Annotated[float, typer.Option(min=1, max=3600, help="how long to mirror")] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    state_dir: StateDir = None,
    compose: Compose = False,
    compose_file: ComposeFile = Path("docker-compose.yml"),
) -> None:
    """Mirror every /predict to green while blue answers all clients; compare their predictions."""
    from canary_kit.control import current
    from canary_kit.shadow import require_shadowable, run_shadow

    target = target_for(state_dir, compose, compose_file)
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
    typer.echo(f"latency p50   blue {report['latency_p50_ms']['blue']} ms  green {report['latency_p50_ms']['green']} ms")


@app.command()
def rollout(
    spec: Annotated[Optional[Path], typer.Option(help="rollout spec YAML [default: the committed one]")] = None,
    steps: Annotated[Optional[str], typer.Option(help="green weights, e.g. 10,25,50,100")] = None,
    hold: Annotated[Optional[float], typer.Option(help="seconds to hold each step")] = None,
    min_requests: Annotated[Optional[int], typer.Option(help="green requests the HTTP gates need")] = None,
    min_rows: Annotated[Optional[int], typer.Option(help="rows each version must predict for the quality gates")] = None,
    max_error_rate: Annotated[Optional[float], typer.Option(help="gate: green's 5xx share, e.g. 0.01")] = None,
    max_p99_ms: Annotated[Optional[float], typer.Option(help="gate: green's p99 latency in ms")] = None,
    max_p99_ratio: Annotated[Optional[float], typer.Option(help="gate: green p99 / blue p99")] = None,
    max_class_divergence: Annotated[
        Optional[float], typer.Option(help="gate: JS distance of green's and blue's predicted-class shares")
    ] = None,
    max_confidence_drop: Annotated[
        Optional[float], typer.Option(help="gate: blue's mean top-class probability minus green's")
    ] = None,
    srm_p_value: Annotated[Optional[float], typer.Option(help="gate: split mismatch below this p-value fails")] = None,
    max_accuracy_drop: Annotated[
        Optional[float], typer.Option(help="gate on labels: blue's accuracy minus green's, with 95% confidence")
    ] = None,
    min_labels: Annotated[Optional[int], typer.Option(help="labelled rows per version the accuracy gate needs")] = None,
    label_wait: Annotated[Optional[float], typer.Option(help="seconds a step waits for labels")] = None,
    dry_run: Annotated[
        Optional[list[str]], typer.Option("--dry-run", help="measure and report this gate, never act on it (repeat)")
    ] = None,
    on_failure: Annotated[Optional[str], typer.Option(help="after the failed checks: rollback or pause")] = None,
    max_failed_checks: Annotated[Optional[int], typer.Option(help="failed checks before on_failure")] = None,
    max_inconclusive: Annotated[Optional[int], typer.Option(help="inconclusive windows before pausing")] = None,
    shadow_seconds: Annotated[Optional[float], typer.Option(help="shadow phase before going live")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(help="shadow agreement (95% lower bound) to go live")] = None,
    state_dir: StateDir = None,
    compose: Compose = False,
    compose_file: ComposeFile = Path("docker-compose.yml"),
) -> None:
    """Walk green through the steps, judging each on its server and model figures; roll back or pause on failure."""
    from canary_kit import rollout as plan
    from canary_kit.control import current, require_green
    from canary_kit.report import write_report
    from canary_kit.shadow import run_shadow
    from canary_kit.spec import load_spec

    try:
        weights = None if steps is None else [int(s) for s in steps.split(",")]
    except ValueError:
        raise CanaryError(f"--steps must be comma-separated whole numbers, got {steps!r}") from None
    overrides = dict(
        steps=weights, hold_seconds=hold, min_requests=min_requests, min_rows=min_rows, max_error_rate=max_error_rate,
        max_p99_ms=max_p99_ms, max_p99_ratio=max_p99_ratio, max_class_divergence=max_class_divergence,
        max_confidence_drop=max_confidence_drop, srm_p_value=srm_p_value, max_accuracy_drop=max_accuracy_drop,
        min_labels=min_labels, label_wait_seconds=label_wait, dry_run=dry_run, on_failure=on_failure,
        max_failed_checks=max_failed_checks, max_inconclusive=max_inconclusive, shadow_seconds=shadow_seconds,
        min_agreement=min_agreement,
    )
    chosen = load_spec(spec, overrides)
    target = target_for(state_dir, compose, compose_file)
    require_green(current(target))
    gates = ", ".join(
        f"{name} {gate.threshold:g}{' (dry-run)' if gate.dry_run else ''}"
        for name, gate in chosen.gates.items() if gate.threshold is not None
    )
    typer.echo(f"rollout: steps {chosen.steps}, hold {chosen.hold_seconds:.0f}s, on failure {chosen.on_failure}; "
               f"gates: {gates}")
    try:
        result = plan.run(target, chosen, typer.echo, run_shadow)
    except KeyboardInterrupt:
        from canary_kit.control import split_of

        typer.echo(f"interrupted: green stays at {split_of(target)[0]}%; `canary rollback` is always safe", err=True)
        raise typer.Exit(130) from None
    report = write_report(result, target.state_dir / "rollouts")
    typer.echo(f"{result.outcome}: {result.reason}; green at {result.final_weight}%  (report: {report})")
    if result.outcome != "promoted":
        raise typer.Exit(2 if result.outcome == "paused" else 1)


@app.command()
def labels(
    file: Annotated[str, typer.Argument(help="CSV or JSON lines with request_id, label and optionally row; - for stdin")],
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="write the valid lines even if some are refused")] = False,
    state_dir: StateDir = None,
    compose: Compose = False,
    compose_file: ComposeFile = Path("docker-compose.yml"),
) -> None:
    """Send the true classes back: join each label to the answer (request id, row) and the version that gave it."""
    from canary_kit import labels as labelling
    from canary_kit import ledger

    data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    target = target_for(state_dir, compose, compose_file)
    with ledger.connect(target.state_dir) as conn:
        ledger.catch_up(target, conn, target.retention)
        parsed = labelling.parse(data, ledger.model_classes(target, conn))
        labelling.check_rows(conn, parsed)
        for line, why in parsed.refused[:20]:
            typer.echo(f"line {line}: {why}", err=True)
        if len(parsed.refused) > 20:
            typer.echo(f"... and {len(parsed.refused) - 20} more refused lines", err=True)
        if parsed.refused and not skip_bad:
            raise CanaryError(f"{len(parsed.refused)} refused line{'s' if len(parsed.refused) > 1 else ''}: nothing written (fix them, or --skip-bad)")
        applied = labelling.apply(conn, parsed.labels)
    joined = sum(applied.joined.values())
    typer.echo(f"joined {joined} labels ({sum(applied.replaced.values())} replacing earlier ones), "
               f"unknown {len(applied.unknown)} (no such answer), refused {len(parsed.refused)}")
    for version in sorted(applied.joined):
        typer.echo(f"  {version}: {applied.joined[version]} joined, {applied.replaced[version]} replaced")
    if applied.unknown:
        shown = ", ".join(f"line {u.line} ({u.request_id})" for u in applied.unknown[:5])
        typer.echo(f"  unknown: {shown}{' ...' if len(applied.unknown) > 5 else ''}")


@app.command()
def quality(
    since: Annotated[
        Optional[str], typer.Option(help="answers since an ISO time, a duration (30m, 2h, 7d) or `change`")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    state_dir: StateDir = None,
    compose: Compose = False,
    compose_file: ComposeFile = Path("docker-compose.yml"),
) -> None:
    """Accuracy per version on the labels sent back, with 95% intervals, confusion matrices and green - blue."""
    from canary_kit import ledger
    from canary_kit.control import current
    from canary_kit.views import quality_lines, read_history

    target = target_for(state_dir, compose, compose_file)
    history = read_history(target.state_dir / "changes.log", 1)
    moment = ledger.since_time(since, history[-1].get("time") if history else None)
    state = current(target)
    report = ledger.quality_report(target, {"blue": state.blue_version, "green": state.green_version}, moment)
    typer.echo(json.dumps(report, indent=2) if as_json else "\n".join(quality_lines(report)))


@app.command()
def dashboard(
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 8300,
    host: Annotated[
        str, typer.Option(help="address to listen on; beyond loopback, reading needs the token too")
    ] = "127.0.0.1",
    state_dir: StateDir = None,
    compose: Compose = False,
    compose_file: ComposeFile = Path("docker-compose.yml"),
) -> None:
    """A live page of both versions (split, health, requests/s, 5xx, p50/p99, predictions, the rollout's gates,
    history) with set-weight, promote, rollback and pause/abort of a running rollout. Needs the token it prints
    (or CANARY_DASHBOARD_TOKEN) for every action."""
    from canary_kit.dashboard import serve

    folder = None if compose else local_state_dir(state_dir)
    serve(lambda: target_for(state_dir, compose, compose_file), folder, host, port, typer.echo, rebuild=not compose)


k8s_app = typer.Typer(help="The same canary on Kubernetes: Argo Rollouts + Gateway API, from the rollout spec.")
app.add_typer(k8s_app, name="k8s")


@k8s_app.command("render")
def k8s_render(
    spec: Annotated[Optional[Path], typer.Option(help="rollout spec YAML [default: the committed one]")] = None,
    out: Annotated[Path, typer.Option(help="folder of the kustomize base")] = Path("deploy/k8s"),
    image_tag: Annotated[
        Optional[str], typer.Option(help="image tag of the version shipped [default: green_version of [tool.canary]]")
    ] = None,
    gateway: Annotated[Optional[str], typer.Option(help="Gateway the routes attach to [default: gateway]")] = None,
    prometheus: Annotated[Optional[str], typer.Option(help="Prometheus URL for the analysis")] = None,
) -> None:
    """Write the kustomize base (Rollout, Services, HTTPRoutes, AnalysisTemplate) from the rollout spec."""
    from canary_kit import k8s
    from canary_kit.spec import load_spec

    try:
        target = k8s.Target.from_settings(settings_from(), image_tag=image_tag, gateway=gateway, prometheus=prometheus)
    except ValidationError as exc:
        raise CanaryError(f"invalid setting: {describe(exc)}") from None
    written = k8s.render(target, load_spec(spec, {}), out, str(spec or "canary_kit/rollout.yaml"))
    typer.echo(f"wrote {len(written)} files to {out}: kubectl apply -k {out}")


@k8s_app.command("check")
def k8s_check(folder: Annotated[Path, typer.Argument(help="kustomize base")] = Path("deploy/k8s")) -> None:
    """Render FOLDER with kubectl kustomize and check what schemas miss: steps, routes, names, gates."""
    from canary_kit import k8s_checks

    docs = k8s_checks.kustomize(folder)
    k8s_checks.ensure(docs, k8s_checks.exports(settings_from().prediction_metrics))
    typer.echo(f"{folder}: {len(docs)} resources ({', '.join(sorted({d['kind'] for d in docs}))}), no problem found")


def main() -> None:
    # `kill` or a closed terminal unwinds a command as Ctrl-C does: a deploy stops the version it was starting.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_once)
    app()


if __name__ == "__main__":
    main()
