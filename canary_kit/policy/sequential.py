"""The sequential gates: each gate's figure with a confidence sequence around it (confseq.py), judged at every look
against two lines. A gate FAILS once the whole sequence lies beyond its tolerance (green is worse than that, with
confidence) and PASSES once it lies wholly within its threshold (green is not as bad as that) with min_rows seen.
Green is compared with blue over the same span (everything since the step began), so that both answer the same
traffic. At 100% blue serves nothing: the error rate is compared with blue's over the rollout's earlier steps, and
the model's and latency's comparisons are not judged (they were, in the same windows, at the earlier steps; against
earlier windows a shift would be the traffic's mix moving over time, not green).

Each gate's error rate is the spec's alpha for it, split evenly over the steps (spec.step_alpha) and, where two
versions' sequences are combined, evenly between them (a union bound), so a gate errs with probability at most its
alpha in a whole rollout however often it is looked at. docs/gates.md has the statistics and their references.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from canary_kit.policy.confseq import (
    bernoulli,
    class_sets,
    dkw_radius,
    largest_shift,
    mean_radius,
    slower_share,
    srm_log_bayes_factor,
)
from canary_kit.policy.evidence import Figures, GateResult, Step, Window
from canary_kit.policy.registry import GATES
from canary_kit.policy.spec import Gate, RolloutSpec
from canary_kit.policy.stats import Errors, ks_distance, mean_sd

SLOW_SHARE = 0.01  # max_p99_ms: the share of green's requests allowed above the threshold (that is what a p99 is)
NOTHING = Figures()  # a version with no figures: no requests, no rows, no latencies


@dataclass(frozen=True)
class Look:
    """One gate at one look: its settings and its lines."""

    name: str
    gate: Gate
    alpha: float  # this step's share of the gate's error rate
    tolerance: float  # fails beyond
    threshold: float  # passes within
    step: Step
    window: Window

    def result(self, status: str, figure: float | None, detail: str, low=None, high=None, one_line=False):
        tolerance = None if one_line else self.tolerance
        return GateResult(self.name, status, figure, self.threshold, self.gate.dry_run, detail, low, high, tolerance)

    def judge(self, figure: float, low: float, high: float, enough: bool, what: str, unit: Callable) -> GateResult:
        """fail | pass | inconclusive for a figure that is worse the larger it is, with the detail saying why."""
        seen = f"{what} {unit(figure)}, within [{unit(low)}, {unit(high)}]"
        if low > self.tolerance:
            return self.result("fail", figure, f"{seen}: above {unit(self.tolerance)}, with confidence", low, high)
        if high < self.threshold and enough:
            return self.result("pass", figure, f"{seen}: below {unit(self.threshold)}, with confidence", low, high)
        lines = f"passes below {unit(self.threshold)}, fails above {unit(self.tolerance)}"
        more = "" if enough else f"; needs {self.gate.min_rows} to pass"
        return self.result("inconclusive", figure, f"{seen}: {lines}{more}", low, high)


SequentialJudge = Callable[[Look], GateResult]
JUDGES: dict[str, SequentialJudge] = {}  # gate name -> its judge in sequential mode (registry.py declares the gates)


def sequential_judge(name: str) -> Callable[[SequentialJudge], SequentialJudge]:
    """Register a gate's judge in sequential mode, under the name registry.py declares it with."""

    def register(judge: SequentialJudge) -> SequentialJudge:
        JUDGES[name] = judge
        return judge

    return register


def judge_sequential(spec: RolloutSpec, step: Step, window: Window) -> list[GateResult]:
    """Every gate this spec judges in sequential mode, in the spec's order (the shadow gate is judged apart). A gate
    that passed earlier at this step stays passed unless it now fails (its test has stopped on the pass side; the
    fail side is still watched: that only adds to the guard)."""
    results = []
    for name, gate in spec.gates.items():
        if GATES[name].kind == "shadow" or not spec.judged(name, window.task):
            continue
        tolerance = spec.gates.tolerance(name)
        assert gate.threshold is not None and tolerance is not None  # judged() says it is set
        look = Look(name, gate, spec.step_alpha(name), tolerance, gate.threshold, step, window)
        result = JUDGES[name](look)
        if name in step.passed and result.status in ("inconclusive", "pass"):
            result.status, result.detail = "pass", f"passed earlier at this step; now {result.detail}"
        results.append(result)
    return results


def _blue(look: Look) -> Figures | None:
    """Blue's figures to compare green's with: the same span's, or at 100% (blue serves nothing) its earlier ones."""
    w = look.window
    return w.blue_reference if look.step.weight >= 100 else w.blue


AT_100 = (
    "not judged at 100%: blue answers nothing in the same span, and against earlier spans a shift would be the "
    "traffic's mix moving over time (judged in the same spans at the earlier steps)"
)


def _pts(x: float) -> str:
    return f"{100 * x:+.2f} pts"


def _share(x: float) -> str:
    return f"{100 * x:.2f}%"


def _plain(x: float) -> str:
    return f"{x:.3f}"


@sequential_judge("max_error_rate")
def error_rate(look: Look) -> GateResult:
    green = look.window.green or NOTHING
    n, errors = green.requests, green.errors
    if n <= 0:
        return look.result("inconclusive", None, "no green requests yet")
    g_low, g_high = bernoulli(errors, n, look.alpha / 2)
    blue = _blue(look) or NOTHING
    m, blue_errors = blue.requests, blue.errors
    if m > 0:
        b_low, b_high = bernoulli(blue_errors, m, look.alpha / 2)
        against = f"blue {_share(blue_errors / m)} of {m}"
    else:  # a rollout that starts at 100%: nothing to compare with, green's own rate
        b_low = b_high = 0.0
        m, against = 1, "blue served nothing: green's own rate"
    difference = errors / n - blue_errors / m
    what = f"5xx green {_share(errors / n)} of {n}, {against}; green - blue"
    return look.judge(difference, g_low - b_high, g_high - b_low, n >= look.gate.min_rows, what, _pts)


@sequential_judge("max_p99_ms")
def p99(look: Look) -> GateResult:
    """Green's p99 within the threshold is its share of slower requests below 1%: that share, judged against 1% (the
    result's figure, interval and line are the share's; the threshold in ms is in the detail)."""
    latency = (look.window.green or NOTHING).latency_ms
    if not latency:
        return look.result("skipped", None, "no per-request latencies (nginx's log) for green", one_line=True)
    n = sum(latency.values())
    if n <= 0:  # a histogram of zero counts: no request timed yet (and no share to divide)
        return look.result("inconclusive", None, "no green request timed yet", one_line=True)
    slow = sum(count for ms, count in latency.items() if float(ms) > look.threshold)
    low, high = bernoulli(slow, n, look.alpha)
    seen = (
        f"{_share(slow / n)} of {n} green requests slower than {look.threshold:g} ms, "
        f"within [{_share(low)}, {_share(high)}]"
    )
    if low > SLOW_SHARE:
        status, detail = "fail", f"{seen}: above 1% (p99 too slow)"
    elif high < SLOW_SHARE and n >= look.gate.min_rows:
        status, detail = "pass", f"{seen}: below 1%"
    else:
        status, detail = "inconclusive", f"{seen}: judged against 1%"
    return GateResult(look.name, status, slow / n, SLOW_SHARE, look.gate.dry_run, detail, low, high)


@sequential_judge("max_slower_share")
def slower(look: Look) -> GateResult:
    if look.step.weight >= 100:
        return look.result("skipped", None, "no blue request in the same window (latency follows load)")
    green = (look.window.green or NOTHING).latency_ms
    blue = (look.window.blue or NOTHING).latency_ms
    found = slower_share(_histogram(green), _histogram(blue)) if green and blue else None
    if found is None:
        return look.result("inconclusive", None, "no per-request latencies of both versions yet (nginx's log)")
    share, n_green, n_blue = found
    radius = mean_radius(n_green, look.alpha / 2) + dkw_radius(n_blue, look.alpha / 2)
    what = f"green slower in {_share(share)} of pairs ({n_green} green / {n_blue} blue requests)"
    return look.judge(share, share - radius, share + radius, n_green >= look.gate.min_rows, what, _share)


def _histogram(counts: dict[int, int]) -> dict[float, int]:
    return {float(ms): n for ms, n in counts.items()}


@sequential_judge("srm_p_value")
def srm(look: Look) -> GateResult:
    weight, split = look.step.weight, look.window.split
    if split is None:
        return look.result("skipped", None, "the split was not measured", one_line=True)
    if not 0 < weight < 100:
        return look.result("skipped", None, f"no split to test at {weight}%", one_line=True)
    green, blue = split.get("green", 0), split.get("blue", 0)
    total = green + blue
    log_bf = srm_log_bayes_factor({"green": green, "blue": blue}, {"green": weight / 100, "blue": 1 - weight / 100})
    p = min(1.0, math.exp(-log_bf)) if log_bf > -700 else 1.0
    seen = f"green had {_share(green / total) if total else '-'} of {total} unpinned requests at weight {weight}%"
    alpha = look.alpha
    if log_bf >= math.log(1 / alpha):
        detail = f"sample-ratio mismatch: {seen} (always-valid p = {p:.2g} < {alpha:.2g})"
        return GateResult(look.name, "fail", p, alpha, look.gate.dry_run, detail)
    status = "pass" if total >= look.gate.min_rows else "inconclusive"
    more = "" if status == "pass" else f"; needs {look.gate.min_rows} to pass"
    detail = f"split as set so far: {seen} (always-valid p = {p:.2g}, fails below {alpha:.2g}{more})"
    return GateResult(look.name, status, p, alpha, look.gate.dry_run, detail)


def _rows(look: Look) -> tuple[Figures, Figures] | GateResult:
    """Both versions' prediction figures, or the verdict while they cannot be compared."""
    if look.step.weight >= 100:
        return look.result("skipped", None, AT_100)
    green, blue = look.window.green or NOTHING, look.window.blue or NOTHING
    if green.rows is None and blue.rows is None:
        return look.result("skipped", None, "the service exports no prediction figures")
    if not green.rows or not blue.rows:
        side = "green" if not green.rows else "blue"
        return look.result("inconclusive", None, f"no rows predicted by {side} yet")
    return green, blue


@sequential_judge("max_class_shift")
def class_shift(look: Look) -> GateResult:
    found = _rows(look)
    if isinstance(found, GateResult):
        return found
    green, blue = found
    classes = set(green.class_rows or {}) | set(blue.class_rows or {})
    if not classes:
        return look.result("inconclusive", None, "no class counts yet")
    sets = class_sets(len(classes))
    n, m = green.rows or 0, blue.rows or 0  # _rows() says both are above 0
    radius_g = mean_radius(n, look.alpha / (2 * sets))
    radius_b = mean_radius(m, look.alpha / (2 * sets))
    estimate, low, high = largest_shift(green.class_rows or {}, blue.class_rows or {}, radius_g, radius_b)
    enough = min(n, m) >= look.gate.min_rows
    return look.judge(estimate, low, high, enough, f"class shift ({n} green / {m} blue rows)", _plain)


@sequential_judge("max_confidence_drop")
def confidence_drop(look: Look) -> GateResult:
    found = _rows(look)
    if isinstance(found, GateResult):
        return found
    green, blue = found
    if green.confidence_mean is None or blue.confidence_mean is None:
        return look.result("inconclusive", None, "no confidence figures yet")
    n, m = green.rows or 0, blue.rows or 0  # _rows() says both are above 0
    drop = blue.confidence_mean - green.confidence_mean
    radius = mean_radius(n, look.alpha / 2) + mean_radius(m, look.alpha / 2)
    what = f"confidence blue {blue.confidence_mean:.3f} - green {green.confidence_mean:.3f} ({n} / {m} rows)"
    enough = min(n, m) >= look.gate.min_rows
    return look.judge(drop, drop - radius, drop + radius, enough, what, _plain)


@sequential_judge("max_accuracy_drop")
def accuracy_drop(look: Look) -> GateResult:
    labels = look.window.labels or {}
    (green, green_right), (blue, blue_right) = labels.get("green", (0, 0)), labels.get("blue", (0, 0))
    if not green or not blue:
        return look.result("inconclusive", None, f"waiting for labels: {green} green / {blue} blue labelled rows")
    g_low, g_high = bernoulli(green_right, green, look.alpha / 2)
    b_low, b_high = bernoulli(blue_right, blue, look.alpha / 2)
    drop = blue_right / blue - green_right / green
    what = (
        f"accuracy blue {_share(blue_right / blue)} - green {_share(green_right / green)} ({blue} / {green} labelled)"
    )
    enough = min(green, blue) >= look.gate.min_rows
    result = look.judge(drop, b_low - g_high, b_high - g_low, enough, what, _pts)
    if result.status == "inconclusive" and not enough:
        result.detail = f"waiting for labels: {result.detail}"
    return result


def _values(look: Look) -> tuple[Sequence[float], Sequence[float]] | GateResult:
    """A regressor's predicted values on both sides, or the verdict while they cannot be compared."""
    if look.step.weight >= 100:
        return look.result("skipped", None, AT_100)
    green, blue = (look.window.green or NOTHING).values, (look.window.blue or NOTHING).values
    if green is None and blue is None:
        return look.result("skipped", None, "no predicted values seen (name the endpoints' JSON paths)")
    if not green or not blue:
        return look.result("inconclusive", None, f"no values predicted by {'green' if not green else 'blue'} yet")
    return green, blue


@sequential_judge("max_ks_distance")
def ks(look: Look) -> GateResult:
    """The KS distance sup |F_green - F_blue| is within the sum of both versions' time-uniform DKW radii of its
    estimate (the triangle inequality), at every look."""
    found = _values(look)
    if isinstance(found, GateResult):
        return found
    green, blue = found
    distance = ks_distance(green, blue)
    assert distance is not None  # _values() returns both sides only when neither is empty
    radius = dkw_radius(len(green), look.alpha / 2) + dkw_radius(len(blue), look.alpha / 2)
    low, high = max(0.0, distance - radius), min(1.0, distance + radius)
    enough = min(len(green), len(blue)) >= look.gate.min_rows
    what = f"KS distance of predicted values ({len(green)} green / {len(blue)} blue rows)"
    return look.judge(distance, low, high, enough, what, _plain)


@sequential_judge("max_mean_shift")
def mean_shift(look: Look) -> GateResult:
    """Green's mean minus blue's in blue's standard deviations, either way: each mean's asymptotic confidence
    sequence (the normal mixture with the sample's own spread: Waudby-Smith et al. 2024), at alpha / 2 each."""
    found = _values(look)
    if isinstance(found, GateResult):
        return found
    green, blue = found
    g, b = mean_sd(green), mean_sd(blue)
    if g is None or b is None or b[1] <= 0:
        return look.result("inconclusive", None, "blue's predictions do not vary yet: no scale for a shift")
    radius = mean_radius(len(green), look.alpha / 2, 2 * g[1]) + mean_radius(len(blue), look.alpha / 2, 2 * b[1])
    shift = (g[0] - b[0]) / b[1]
    low, high = shift - radius / b[1], shift + radius / b[1]
    seen = f"mean shift {shift:+.3f} sd, within [{low:+.3f}, {high:+.3f}] ({len(green)} green / {len(blue)} blue rows)"
    if low > look.tolerance or high < -look.tolerance:
        return look.result("fail", shift, f"{seen}: beyond {look.tolerance:g} sd, with confidence", low, high)
    if -look.threshold < low and high < look.threshold and min(len(green), len(blue)) >= look.gate.min_rows:
        return look.result("pass", shift, f"{seen}: within {look.threshold:g} sd, with confidence", low, high)
    lines = f"passes within {look.threshold:g} sd, fails beyond {look.tolerance:g} sd"
    return look.result("inconclusive", shift, f"{seen}: {lines}", low, high)


@sequential_judge("max_error_increase")
def error_increase(look: Look) -> GateResult:
    """Green's mean absolute error over blue's, minus 1: each MAE's asymptotic confidence sequence (the spread of
    |error| from the sums of squares), at alpha / 2 each, and the ratio of their ends."""
    errors = look.window.errors or {}
    green, blue = errors.get("green", Errors()), errors.get("blue", Errors())
    if green.n < 2 or blue.n < 2 or green.mae is None or blue.mae is None:
        return look.result("inconclusive", None, f"waiting for labels: {green.n} green / {blue.n} blue labelled rows")
    if blue.mae <= 0:
        return look.result("inconclusive", None, "no error to compare with (blue's answers are exact)")
    bounds = []
    for e, mae in ((green, green.mae), (blue, blue.mae)):
        spread = math.sqrt(max(0.0, (e.sq_sum - e.n * mae**2) / (e.n - 1)))  # of |error|: |e|^2 = e^2
        radius = mean_radius(e.n, look.alpha / 2, 2 * spread)
        bounds.append((max(0.0, mae - radius), mae + radius))
    (g_low, g_high), (b_low, b_high) = bounds
    increase = green.mae / blue.mae - 1
    low, high = g_low / b_high - 1, (g_high / b_low - 1) if b_low > 0 else math.inf
    what = f"MAE green {green.mae:.4g} / blue {blue.mae:.4g} - 1 ({green.n} / {blue.n} labelled)"
    result = look.judge(increase, low, high, min(green.n, blue.n) >= look.gate.min_rows, what, _pct)
    if result.status == "inconclusive" and min(green.n, blue.n) < look.gate.min_rows:
        result.detail = f"waiting for labels: {result.detail}"
    return result


def _pct(x: float) -> str:
    return "inf" if math.isinf(x) else f"{100 * x:+.1f}%"


def judge_agreement(spec: RolloutSpec, rows: int, agreed: int) -> tuple[str, float | None, float | None, str]:
    """The shadow phase's agreement in sequential mode: (status, low, high, detail); it passes once the share's
    confidence sequence is wholly at or above the threshold and fails once it is wholly below."""
    gate = spec.gates["min_agreement"]
    assert gate.threshold is not None
    if rows <= 0:
        return "inconclusive", None, None, "no rows compared in the shadow phase yet"
    low, high = bernoulli(agreed, rows, spec.step_alpha("min_agreement"))
    seen = f"shadow agreement {_share(agreed / rows)} of {rows} rows, within [{_share(low)}, {_share(high)}]"
    if high < gate.threshold:
        return "fail", low, high, f"{seen}: below {_share(gate.threshold)}, with confidence"
    if low >= gate.threshold and rows >= gate.min_rows:
        return "pass", low, high, f"{seen}: at least {_share(gate.threshold)}, with confidence"
    return "inconclusive", low, high, f"{seen}: not yet decided against {_share(gate.threshold)}"
