"""The decision of one look at a rollout step, as data: a pure function of (spec, step, both versions' figures).

    decide(spec, Step(...), Window(...)) -> Decision(verdict, outcome, reason, gates)

No clock, no network, no state file: the driver (driver.py) measures, asks this, and acts. The verdicts:
- advance: every live gate passed (sequential: and the step has lasted min_step_seconds);
- hold: look again at this step (too little evidence; a failed check with failures left; blue down and the spec
  says wait; sequential: no verdict yet from some gate);
- fail: the rollout has failed (on_failure: rollback): roll back;
- pause: stop where it is (on_failure: pause; too little evidence for too long; blue down and the spec says pause).
Each gate's result is kept whether live or dry-run, for the report: pass | fail | inconclusive | skipped.

Two modes (spec.mode): fixed judges one hold's window against each threshold once, and counts failed windows
(max_failed_checks) as Argo Rollouts and Flagger do; sequential (sequential.py) judges everything since the step
began with confidence sequences at every look, and a gate's fail is final at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from canary_kit.policy.evidence import Decision, Figures, GateResult, Step, Window
from canary_kit.policy.registry import GATES
from canary_kit.policy.sequential import judge_agreement, judge_sequential
from canary_kit.policy.spec import Gate, RolloutSpec, applies
from canary_kit.policy.stats import (
    Errors,
    difference,
    error_increase,
    js_distance,
    ks_distance,
    mean_shift,
    srm_p_value,
    wilson,
)

__all__ = ["Decision", "Figures", "GateResult", "Step", "Window", "decide", "judge_gates", "judge_shadow"]

Verdict = tuple[str, float | None, str]  # one gate over one window: status, figure, detail
FixedJudge = Callable[[Gate, float, Figures, Window, int], Verdict]  # (gate, threshold, green, window, weight)
FIXED: dict[str, FixedJudge] = {}  # gate name -> its judge in fixed mode (registry.py declares the gates)


def fixed_judge(name: str) -> Callable[[FixedJudge], FixedJudge]:
    """Register a gate's judge in fixed mode, under the name registry.py declares it with."""

    def register(judge: FixedJudge) -> FixedJudge:
        FIXED[name] = judge
        return judge

    return register


def decide(spec: RolloutSpec, step: Step, window: Window) -> Decision:
    """The verdict of one look."""
    if not window.blue_ready:
        reason = "blue is down: green would be judged against nothing, and answers blue's share meanwhile"
        waited = step.blue_down_seconds
        if spec.on_blue_down == "pause" or waited >= spec.blue_down_seconds:
            extra = "" if spec.on_blue_down == "pause" else f" for {waited:.0f}s (blue_down_seconds)"
            return Decision("pause", "blue-down", reason + extra)
        return Decision("hold", "blue-down", reason + "; waiting for blue")
    if not window.green_ready:
        return _failed(spec, step, "green is not ready (health check failed)", [])
    if window.green is None:
        return _failed(spec, step, "green's /metrics did not answer", [])
    if spec.mode == "sequential":
        return _decide_sequential(spec, step, window)
    results = judge_gates(spec, step.weight, window)
    live = [r for r in results if not r.dry_run]
    failed = [r for r in live if r.status == "fail"]
    if failed:
        return _failed(spec, step, failed[0].detail, results)
    waiting = [r for r in live if r.status == "inconclusive"]
    if waiting and all(GATES[r.name].kind == "labels" for r in waiting):  # only labels are missing: wait for them
        return _label_wait(spec, step, waiting[0], results)
    if waiting:
        count = step.inconclusive + 1
        reason = "; ".join(r.detail for r in waiting)
        if count >= spec.max_inconclusive:
            return Decision("pause", "inconclusive", f"too little evidence at {step.weight}%: {reason}", results)
        return Decision("hold", "inconclusive", reason, results)
    requests = window.green.requests
    return Decision("advance", "pass", f"{requests} green requests, gates passed{_dry_note(results)}", results)


def _decide_sequential(spec: RolloutSpec, step: Step, window: Window) -> Decision:
    results = judge_sequential(spec, step, window)
    live = [r for r in results if not r.dry_run]
    failed = [r for r in live if r.status == "fail"]
    if failed:  # a confidence sequence beyond its tolerance: no second check needed, that is what alpha pays for
        verdict = "fail" if spec.on_failure == "rollback" else "pause"
        return Decision(verdict, "fail", f"{failed[0].name}: {failed[0].detail}", results)
    waiting = [r for r in live if r.status == "inconclusive"]
    took = f"{step.seconds:.0f}s, {(window.green or Figures()).requests} green requests"
    if not waiting:
        if step.seconds >= spec.min_step_seconds:
            passed = ", ".join(r.name for r in live if r.status == "pass") or "no live gate"
            return Decision(
                "advance", "pass", f"every gate passed after {took} ({passed}){_dry_note(results)}", results
            )
        return Decision("hold", "gathering", f"every gate passed; the step lasts min_step_seconds ({took})", results)
    if all(GATES[r.name].kind == "labels" for r in waiting):
        return _label_wait(spec, step, waiting[0], results)
    if step.seconds >= spec.max_step_seconds:
        names = ", ".join(r.name for r in waiting)
        reason = f"no verdict from {names} after {took} (max_step_seconds): {waiting[0].detail}"
        return Decision("pause", "inconclusive", reason, results)
    return Decision("hold", "gathering", f"waiting for {', '.join(r.name for r in waiting)} ({took})", results)


def _label_wait(spec: RolloutSpec, step: Step, waiting: GateResult, results: list[GateResult]) -> Decision:
    if step.seconds >= spec.label_wait_seconds:
        reason = f"no accuracy verdict after {step.seconds:.0f}s (label_wait_seconds): {waiting.detail}"
        return Decision("fail" if spec.on_failure == "rollback" else "pause", "inconclusive", reason, results)
    return Decision("hold", "awaiting-labels", waiting.detail, results)


def _dry_note(results: list[GateResult]) -> str:
    dry = [r.detail for r in results if r.dry_run and r.status == "fail"]
    return f"; dry-run only: {'; '.join(dry)}" if dry else ""


def _failed(spec: RolloutSpec, step: Step, reason: str, results: list[GateResult]) -> Decision:
    count = step.failed + 1
    if count < spec.max_failed_checks:
        return Decision("hold", "fail", f"{reason} (failed check {count} of {spec.max_failed_checks})", results)
    return Decision("fail" if spec.on_failure == "rollback" else "pause", "fail", reason, results)


def judge_gates(spec: RolloutSpec, weight: int, window: Window) -> list[GateResult]:
    """Every gate of the spec over the window, in the spec's order."""
    results: list[GateResult] = []
    green = window.green
    if green is None:  # decide() judges no gate then
        return results
    for name, gate in spec.gates.items():
        judge = FIXED.get(name)
        if judge is None or gate.threshold is None or not applies(name, window.task):
            continue
        status, figure, detail = judge(gate, gate.threshold, green, window, weight)
        results.append(GateResult(name, status, figure, gate.threshold, gate.dry_run, detail))
    return results


@fixed_judge("max_error_rate")
def _error_rate(gate: Gate, limit: float, green: Figures, w: Window, weight: int) -> Verdict:
    g = green
    rate = g.error_rate
    # decided even on a quiet window: these errors break the gate whatever the next requests bring
    if g.errors > limit * max(g.requests, gate.min_rows):
        return "fail", rate, f"green answered {g.errors} of {g.requests} requests with 5xx"
    if g.requests < gate.min_rows:
        return "inconclusive", rate, f"only {g.requests} green requests (need {gate.min_rows})"
    # here errors <= limit * requests: the rate (errors / requests) is within the limit
    return "pass", rate, f"green error rate {rate:.2%} <= {limit:.2%}"


@fixed_judge("max_p99_ms")
def _p99(gate: Gate, limit: float, green: Figures, w: Window, weight: int) -> Verdict:
    g = green
    if g.requests < gate.min_rows or g.p99_ms is None:
        return "inconclusive", g.p99_ms, f"only {g.requests} green requests (need {gate.min_rows})"
    if g.p99_ms > limit:
        return "fail", g.p99_ms, f"green p99 {g.p99_ms:.0f} ms > {limit:.0f} ms"
    return "pass", g.p99_ms, f"green p99 {g.p99_ms:.0f} ms <= {limit:.0f} ms"


@fixed_judge("max_p99_ratio")
def _p99_ratio(gate: Gate, limit: float, green: Figures, w: Window, weight: int) -> Verdict:
    g, b = green, w.blue
    if not (b and b.requests and b.p99_ms):
        return "skipped", None, "blue served no requests in the window"
    if g.requests < gate.min_rows or g.p99_ms is None:
        return "inconclusive", None, f"only {g.requests} green requests (need {gate.min_rows})"
    ratio = g.p99_ms / b.p99_ms
    if ratio > limit:
        return "fail", ratio, f"green p99 is {ratio:.1f}x blue's (> {limit:.1f}x)"
    return "pass", ratio, f"green p99 is {ratio:.1f}x blue's (<= {limit:.1f}x)"


@fixed_judge("srm_p_value")
def _srm(gate: Gate, limit: float, figures: Figures, w: Window, weight: int) -> Verdict:
    if w.split is None:
        return "skipped", None, "the split was not measured"
    green, blue = w.split.get("green", 0), w.split.get("blue", 0)
    total = green + blue
    if not 0 < weight < 100:
        return "skipped", None, f"no split to test at {weight}%"
    if total < gate.min_rows:
        return "inconclusive", None, f"only {total} unpinned /predict requests to test the split (need {gate.min_rows})"
    p = srm_p_value(green, blue, weight / 100)
    assert p is not None  # 0 < weight < 100 and total >= min_rows >= 1 here
    seen = f"green had {green / total:.1%} of {total} unpinned requests at weight {weight}%"
    if p < limit:
        return "fail", p, f"sample-ratio mismatch: {seen} (p = {p:.2g} < {limit:g})"
    return "pass", p, f"split as set: {seen} (p = {p:.2g})"


def _blue_rows(gate: Gate, green: Figures, w: Window) -> Figures | Verdict:
    """Blue's prediction figures to compare green's with in a quality gate, or the verdict while the two cannot be
    judged."""
    blue = w.blue if w.blue and (w.blue.rows or 0) >= gate.min_rows else w.blue_reference or w.blue
    if green.rows is None and (blue is None or blue.rows is None):
        return "skipped", None, "no predictions seen (name the endpoints' JSON paths, or the service's metrics)"
    if green.rows is None:
        return "inconclusive", None, "no predictions seen from green"
    if not blue or blue.rows is None:
        return "inconclusive", None, "no predictions seen from blue"
    if green.rows < gate.min_rows or blue.rows < gate.min_rows:
        return (
            "inconclusive",
            None,
            (f"only {green.rows} green / {blue.rows} blue rows predicted (need {gate.min_rows} each)"),
        )
    return blue


@fixed_judge("max_class_divergence")
def _class_divergence(gate: Gate, limit: float, green: Figures, w: Window, weight: int) -> Verdict:
    blue = _blue_rows(gate, green, w)
    if isinstance(blue, tuple):
        return blue
    distance = js_distance(green.class_rows or {}, blue.class_rows or {})
    if distance is None:
        return "inconclusive", None, "no class counts in the window"
    seen = f"class divergence {distance:.3f}"
    counted = f"({green.rows} green / {blue.rows} blue rows)"
    if distance > limit:
        return "fail", distance, f"{seen} > {limit:g} {counted}"
    return "pass", distance, f"{seen} <= {limit:g} {counted}"


@fixed_judge("max_confidence_drop")
def _confidence_drop(gate: Gate, limit: float, green: Figures, w: Window, weight: int) -> Verdict:
    blue = _blue_rows(gate, green, w)
    if isinstance(blue, tuple):
        return blue
    if green.confidence_mean is None or blue.confidence_mean is None:
        return "inconclusive", None, "no confidence figures in the window"
    drop = blue.confidence_mean - green.confidence_mean
    seen = f"confidence drop {drop:.3f} (blue {blue.confidence_mean:.3f}, green {green.confidence_mean:.3f})"
    if drop > limit:
        return "fail", drop, f"{seen} > {limit:g}"
    return "pass", drop, f"{seen} <= {limit:g}"


@fixed_judge("max_accuracy_drop")
def _accuracy_drop(gate: Gate, limit: float, figures: Figures, w: Window, weight: int) -> Verdict:
    labels = w.labels or {}
    (green, green_right), (blue, blue_right) = labels.get("green", (0, 0)), labels.get("blue", (0, 0))
    if green < gate.min_rows or blue < gate.min_rows:
        return (
            "inconclusive",
            None,
            (f"waiting for labels: {green} green / {blue} blue labelled rows (need {gate.min_rows} each)"),
        )
    found = difference(green_right, green, blue_right, blue)
    assert found is not None  # both have at least min_rows >= 1 labelled rows
    diff, low, high = found
    seen = (
        f"accuracy green {green_right / green:.1%} vs blue {blue_right / blue:.1%} ({green} / {blue} labelled), "
        f"difference {diff:+.1%} [{low:+.1%}, {high:+.1%}]"
    )
    if high < -limit:
        return "fail", diff, f"{seen}: green worse by more than {limit:.1%}"
    if low > -limit:
        return "pass", diff, f"{seen}: not worse by {limit:.1%}"
    return "inconclusive", diff, f"{seen}: not yet decided at a {limit:.1%} margin"


@dataclass(frozen=True)
class Values:
    """Green's and blue's predicted values in a window: what a regressor's gates compare."""

    green: Sequence[float]
    blue: Sequence[float]


def _values(gate: Gate, green: Figures, w: Window) -> Values | Verdict:
    """Green's and blue's predicted values in the window (blue's last sufficient window once it has no traffic),
    or the verdict while they cannot be compared."""
    blue = _blue_rows(gate, green, w)
    if isinstance(blue, tuple):
        return blue
    if green.values is None or blue.values is None:
        return "skipped", None, "no predicted values seen (name the endpoints' JSON paths)"
    return Values(green.values, blue.values)


@fixed_judge("max_ks_distance")
def _ks_distance(gate: Gate, limit: float, green: Figures, w: Window, weight: int) -> Verdict:
    found = _values(gate, green, w)
    if not isinstance(found, Values):
        return found
    values_green, values_blue = found.green, found.blue
    distance = ks_distance(values_green, values_blue)
    if distance is None:
        return "inconclusive", None, "no predicted values in the window"
    counted = f"({len(values_green)} green / {len(values_blue)} blue rows)"
    if distance > limit:
        return "fail", distance, f"KS distance of predicted values {distance:.3f} > {limit:g} {counted}"
    return "pass", distance, f"KS distance of predicted values {distance:.3f} <= {limit:g} {counted}"


@fixed_judge("max_mean_shift")
def _mean_shift(gate: Gate, limit: float, green: Figures, w: Window, weight: int) -> Verdict:
    found = _values(gate, green, w)
    if not isinstance(found, Values):
        return found
    shift = mean_shift(found.green, found.blue)
    if shift is None:
        return "inconclusive", None, "blue's predictions do not vary: no scale for a shift"
    value, low, high = shift
    seen = f"mean shift {value:+.3f} sd [{low:+.3f}, {high:+.3f}]"
    if low > limit or high < -limit:
        return "fail", value, f"{seen}: beyond {limit:g} sd"
    if -limit < low and high < limit:
        return "pass", value, f"{seen}: within {limit:g} sd"
    return "inconclusive", value, f"{seen}: not yet decided at {limit:g} sd"


@fixed_judge("max_error_increase")
def _error_increase(gate: Gate, limit: float, figures: Figures, w: Window, weight: int) -> Verdict:
    errors = w.errors or {}
    green, blue = errors.get("green", Errors()), errors.get("blue", Errors())
    if green.n < gate.min_rows or blue.n < gate.min_rows:
        return (
            "inconclusive",
            None,
            f"waiting for labels: {green.n} green / {blue.n} blue labelled rows (need {gate.min_rows} each)",
        )
    found = error_increase(green, blue)
    if found is None:
        return "inconclusive", None, "no error to compare with (blue's answers are exact)"
    increase, low, high = found
    seen = (
        f"MAE green {green.mae:.4g} vs blue {blue.mae:.4g} ({green.n} / {blue.n} labelled), "
        f"green over blue {increase:+.1%} [{low:+.1%}, {high:+.1%}]"
    )
    if low > limit:
        return "fail", increase, f"{seen}: green's error higher by more than {limit:.0%}"
    if high < limit:
        return "pass", increase, f"{seen}: not higher by {limit:.0%}"
    return "inconclusive", increase, f"{seen}: not yet decided at a {limit:.0%} margin"


def judge_shadow(spec: RolloutSpec, report: dict) -> GateResult:
    """The shadow phase's agreement gate: on the 95% Wilson lower bound of the rows both versions agreed on (fixed),
    or on the share's confidence sequence at the gate's alpha (sequential: valid however often the phase looks)."""
    gate = spec.gates["min_agreement"]
    rows, agreed = report.get("rows_compared", 0), report.get("rows_agreed", 0)
    if spec.mode == "sequential" and gate.threshold is not None:
        status, low, high, detail = judge_agreement(spec, rows, agreed)
        if status == "inconclusive" and rows < gate.min_rows:
            detail = f"only {rows} rows compared in the shadow phase (need {gate.min_rows}); {detail}"
        figure = round(agreed / rows, 4) if rows else None
        return GateResult("min_agreement", status, figure, gate.threshold, gate.dry_run, detail, low, high)
    bounds = wilson(agreed, rows)
    low = None if bounds is None else round(bounds[0], 4)
    if gate.threshold is None:
        return GateResult("min_agreement", "skipped", low, None, gate.dry_run, "no min_agreement set")
    if rows < gate.min_rows or low is None:
        return GateResult(
            "min_agreement",
            "inconclusive",
            low,
            gate.threshold,
            gate.dry_run,
            f"only {rows} rows compared in the shadow phase (need {gate.min_rows})",
        )
    seen = f"shadow agreement {agreed / rows:.2%} of {rows} rows, 95% lower bound {low:.2%}"
    if low < gate.threshold:
        return GateResult("min_agreement", "fail", low, gate.threshold, gate.dry_run, f"{seen} < {gate.threshold:.2%}")
    return GateResult("min_agreement", "pass", low, gate.threshold, gate.dry_run, f"{seen} >= {gate.threshold:.2%}")
