"""Progressive rollout with gates: step green's weight up, judge each step, roll back or pause on failure.

This is the driver: it sets each step's weight through the same safe path as `canary set-weight`, holds it while
checking both versions' health, measures the window (deltas of both backends' /metrics, and the unpinned split
from nginx's log), asks `gates.decide` for the verdict, prints it and acts on it. The verdict itself is a pure
function of the spec, the step and the window's figures (gates.py), tested on recorded windows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from canary_kit.answers import fill, observed
from canary_kit.control import SplitChanged, current, set_weight
from canary_kit.gates import Decision, Step, Window, decide, judge_shadow
from canary_kit.ledger import errors_since, labelled_since, utc
from canary_kit.live import Channel, Interrupted
from canary_kit.metrics import figures_between, unpinned_split
from canary_kit.routing import RoutingState
from canary_kit.scrape import snapshots
from canary_kit.spec import RolloutSpec
from canary_kit.target import Target
from canary_kit.views import figures_line

Echo = Callable[[str], None]
ShadowPhase = Callable[[Target, float, Echo], dict]  # shadow.run_shadow: mirror for some seconds, then compare


@dataclass
class Check:
    """One judged window: the verdict, how the window itself came out, why, each gate, and the figures."""

    step: int
    weight: int
    verdict: str  # advance | hold | fail | pause
    reason: str
    at: float
    green: dict | None = None
    blue: dict | None = None
    outcome: str = ""  # pass | fail | inconclusive | blue-down
    gates: list[dict] = field(default_factory=list)
    split: dict | None = None


@dataclass
class Rollout:
    """The outcome, with every check, for the report."""

    spec: dict
    started: str
    outcome: str = "running"  # promoted | rolled back | paused | stopped (split changed by someone else)
    reason: str = ""
    final_weight: int | None = None
    shadow: dict | None = None
    checks: list[Check] = field(default_factory=list)


WORD = {
    "pass": "ADVANCE",
    "inconclusive": "HOLD",
    "fail": "FAIL",
    "blue-down": "BLUE DOWN",
    "awaiting-labels": "HOLD (labels)",
}


def run(target: Target, spec: RolloutSpec, echo: Echo, shadow_phase: ShadowPhase | None = None) -> Rollout:
    """Walk the steps; return how it ended. Ctrl-C leaves the split where it is (the caller says so). Progress is
    published, and pause/abort requests are taken, through the state folder (live.py)."""
    result = Rollout(spec=spec.model_dump(), started=datetime.now(UTC).isoformat(timespec="seconds"))
    channel = Channel(target.state_dir, result)
    try:
        return _walk(target, spec, echo, shadow_phase, result, channel)
    finally:
        channel.publish(state=None if result.outcome != "running" else "interrupted")


def _walk(
    target: Target, spec: RolloutSpec, echo: Echo, shadow_phase: ShadowPhase | None, result: Rollout, channel: Channel
) -> Rollout:
    t0 = time.monotonic()
    since = utc(result.started) or result.started  # labels count for every answer of this rollout, in any step
    if spec.shadow_seconds and not _shadow_passes(target, spec, echo, shadow_phase, result):
        return result
    failed = 0
    state = current(target)
    result.final_weight = state.green_weight
    blue_reference = None
    for number, weight in enumerate(spec.steps, start=1):
        if weight < state.green_weight and not state.shadow:
            continue  # green already has more than this share: carry on from where it is
        try:  # a pause or abort asked since the last window stops the rollout before green gets more
            channel.check()
        except Interrupted as asked:
            return _interrupted(target, result, asked, state.green_weight, echo)
        try:  # only from the state the rollout left: any change meanwhile (an operator, a deploy) stops it
            _, state = set_weight(
                target, weight, reason=f"rollout step {number}/{len(spec.steps)}", expect=state.serial, event="rollout"
            )
        except SplitChanged as exc:
            result.outcome, result.reason = "stopped", str(exc)
            result.final_weight = current(target).green_weight
            return result
        result.final_weight = weight
        inconclusive, blue_down_since, step_started, blue_down_total = 0, None, time.monotonic(), 0.0
        while True:
            channel.publish(step=number, weight=weight, window_started=time.time())
            try:
                window = _measure(target, spec, state, number, weight, echo, blue_reference, since, channel)
            except Interrupted as asked:
                return _interrupted(target, result, asked, weight, echo)
            if window is None:
                now = current(target)
                result.outcome, result.final_weight = "stopped", now.green_weight
                result.reason = f"the state was changed by someone else (green now {now.green_weight}%)"
                return result
            went_down = not window.blue_ready and blue_down_since is None
            if window.blue_ready:
                if blue_down_since is not None:
                    blue_down_total += time.monotonic() - blue_down_since
                blue_down_since = None
            elif went_down:
                blue_down_since = time.monotonic()
            down_for = 0.0 if blue_down_since is None else time.monotonic() - blue_down_since
            held = time.monotonic() - step_started - blue_down_total - down_for  # the wait for labels: blue up
            decision = decide(spec, Step(number, weight, failed, inconclusive, down_for, held), window)
            if decision.outcome != "blue-down" or went_down or decision.verdict != "hold":  # one line while down
                _record(result, decision, number, weight, window, t0, echo, len(spec.steps))
                channel.publish()
            if window.blue and (window.blue.get("rows") or 0) >= spec.gates.max_class_divergence.min_rows:
                blue_reference = window.blue  # the comparison once blue has no traffic (green at 100%)
            failed += decision.outcome == "fail"
            inconclusive += decision.outcome == "inconclusive"
            if decision.verdict == "advance":
                break
            if decision.verdict == "hold":
                continue
            if decision.verdict == "pause":
                result.outcome, result.reason = "paused", f"at {weight}%: {decision.reason}"
                return result
            set_weight(target, 0, reason=f"rollout: {decision.reason}", event="rollout")
            result.outcome, result.final_weight = "rolled back", 0
            result.reason = (
                f"{failed} failed checks; last: {decision.reason}" if decision.outcome == "fail" else decision.reason
            )
            return result
    result.outcome, result.reason = "promoted", "every step passed"
    return result


def _shadow_passes(
    target: Target, spec: RolloutSpec, echo: Echo, shadow_phase: ShadowPhase | None, result: Rollout
) -> bool:
    """The shadow phase and its agreement gate; False (and the outcome set) when green must not go live."""
    if shadow_phase is None:
        raise ValueError("the spec asks for a shadow phase, and none was given")
    result.shadow = shadow_phase(target, spec.shadow_seconds, echo)
    gate = judge_shadow(spec, result.shadow)
    result.shadow["gate"] = gate.as_dict()
    echo(f"shadow: {gate.mark.upper()} - {gate.detail}; flips (blue -> green): {result.shadow.get('flips') or 'none'}")
    if gate.dry_run or gate.status in ("pass", "skipped"):
        return True
    if spec.on_failure == "pause" or gate.status == "inconclusive":
        result.outcome, result.final_weight = "paused", current(target).green_weight
        result.reason = f"not live: {gate.detail}"
        return False
    set_weight(target, 0, reason=f"rollout: {gate.detail}", event="rollout")
    result.outcome, result.final_weight, result.reason = "rolled back", 0, f"not live: {gate.detail}"
    return False


def _interrupted(target: Target, result: Rollout, asked: Interrupted, weight: int, echo: Echo) -> Rollout:
    """A pause (the split stays) or an abort (green back to 0%) asked from outside, e.g. from `canary dashboard`."""
    why = f"{asked.action} asked from outside by {asked.by or 'someone'}" + (
        f" ({asked.reason})" if asked.reason else ""
    )
    echo(f"rollout: {why}")
    if asked.action == "abort":
        set_weight(target, 0, reason=f"rollout aborted: {why}", event="rollout")
        result.outcome, result.final_weight, result.reason = "rolled back", 0, f"aborted at {weight}%: {why}"
    else:
        result.outcome, result.final_weight, result.reason = "paused", weight, f"at {weight}%: {why}"
    return result


def _measure(
    target: Target,
    spec: RolloutSpec,
    state: RoutingState,
    number: int,
    weight: int,
    echo: Echo,
    blue_reference: dict | None,
    since: str,
    channel: Channel | None = None,
) -> Window | None:
    """Hold one window (cut short when a version stops answering its health check); None if someone else changed
    the state meanwhile."""
    before, mark, started = snapshots(target), target.log_mark(), time.monotonic()
    green_ready = blue_ready = True
    shown = 0.0
    while (elapsed := time.monotonic() - started) < spec.hold_seconds:
        time.sleep(min(spec.check_every, spec.hold_seconds - elapsed))
        if current(target).serial != state.serial:
            return None
        if channel is not None:
            channel.check()  # raises Interrupted on a pause or abort asked from outside
        green_ready = target.serving("green") is not None  # as control.takeover reads "blue is down"
        blue_ready = target.serving("blue") is not None
        if not (green_ready and blue_ready):
            break
        if time.monotonic() - shown >= 5:
            shown = time.monotonic()
            left = max(0.0, spec.hold_seconds - (shown - started))
            live = figures_between(before["green"], snapshots(target)["green"])
            echo(f"  step {number}/{len(spec.steps)}  green {weight}%  {left:4.0f}s left  green: {figures_line(live)}")
    after = snapshots(target)
    model = target.prediction_metrics
    versions = {"blue": state.blue_version, "green": state.green_version}
    entries = target.log_since(mark)
    split = unpinned_split(entries, versions, model.endpoints)
    seen = observed(entries, versions, model.endpoints, model.task) if model.observed else {}
    green, blue = (fill(figures_between(before[c], after[c]), seen.get(c), model) for c in ("green", "blue"))
    regression = model.task == "regression"
    labels = (
        labelled_since(target, versions, since)
        if not regression and spec.gates.max_accuracy_drop.threshold is not None
        else None
    )
    errors = errors_since(target, versions, since) if regression and spec.gates.max_error_increase.live else None
    return Window(green, blue, split, green_ready, blue_ready, blue_reference, labels, model.task, errors)


def _reported(figures: dict | None) -> dict | None:
    """A version's figures as the report keeps them: without the predicted values themselves."""
    return None if figures is None else {k: v for k, v in figures.items() if k != "values"}


def _record(
    result: Rollout, decision: Decision, number: int, weight: int, window: Window, t0: float, echo: Echo, steps: int
) -> None:
    at = round(time.monotonic() - t0, 1)
    result.checks.append(
        Check(
            number,
            weight,
            decision.verdict,
            decision.reason,
            at,
            _reported(window.green),
            _reported(window.blue),
            decision.outcome,
            [g.as_dict() for g in decision.gates],
            window.split,
        )
    )
    echo(
        f"step {number}/{steps} green {weight}%: {WORD[decision.outcome]} - {decision.reason}  "
        f"(blue: {figures_line(window.blue)})"
    )
    for gate in decision.gates:
        if gate.dry_run and gate.status == "fail":
            echo(f"  dry-run gate {gate.name} failed (not acted on): {gate.detail}")
