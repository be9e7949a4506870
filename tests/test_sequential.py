"""The sequential gates on windows recorded from real stacks (tests/data/windows.json), and the rollout spec's
sequential fields: error rates, tolerances, the step's guard rails, refused in one line before anything changes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from canary_kit.core.errors import CanaryError
from canary_kit.policy.evidence import Figures, Step, Window
from canary_kit.policy.gates import decide, judge_shadow
from canary_kit.policy.sequential import judge_sequential
from canary_kit.policy.spec import load_spec
from conftest import canary_process

RECORDED = json.loads((Path(__file__).parent / "data" / "windows.json").read_text())


def window(name: str, scale: float = 1.0, **changes) -> Window:
    """A recorded window, its counts times `scale` (as if held that much longer)."""
    recorded = RECORDED[name]

    def grown(figures: dict) -> dict:
        out = dict(figures)
        for key in ("requests", "errors", "rows"):
            out[key] = round(figures[key] * scale)
        out["class_rows"] = {c: round(n * scale) for c, n in figures["class_rows"].items()}
        out["latency_ms"] = {2: round(out["requests"] * 0.6), 3: round(out["requests"] * 0.3), 5: out["requests"] // 10}
        return out

    total = round(sum(recorded["split"].values()) * scale)
    green = round(total * recorded["weight"] / 100)  # the split as set: a recorded 9.15% grown 6 times is a mismatch
    split = {"green": green, "blue": total - green}
    fields = {"green": grown(recorded["green"]), "blue": grown(recorded["blue"]), "split": split, **changes}
    for key in ("green", "blue"):  # the figures in their JSON form, as recorded
        if isinstance(fields[key], dict):
            fields[key] = Figures.from_json(fields[key])
    return Window(**fields)


def statuses(results) -> dict[str, str]:
    return {r.name: r.status for r in results}


def test_every_sequential_gate_shows_its_interval_against_its_two_lines():
    spec = load_spec(None, {})
    results = judge_sequential(spec, Step(1, 10), window("healthy", 3))
    print("\n".join(f"{r.name}: {r.status} - {r.detail}" for r in results))
    assert [r.name for r in results] == [
        "max_error_rate",
        "max_p99_ms",
        "max_slower_share",
        "srm_p_value",
        "max_class_shift",
        "max_confidence_drop",
    ], "the fixed-only gates (max_p99_ratio, max_class_divergence) are not judged in sequential mode"
    for r in results:
        if r.name != "srm_p_value":
            assert r.low is not None and r.low <= r.figure <= r.high, r
    error = next(r for r in results if r.name == "max_error_rate")
    assert (error.tolerance, error.threshold) == (0.002, 0.01)
    assert "passes below +1.00 pts, fails above +0.20 pts" in error.detail or error.status == "pass"


def test_the_weak_model_fails_on_the_model_gates_and_passes_the_http_ones():
    results = judge_sequential(load_spec(None, {}), Step(1, 10), window("weak", 1))
    found = statuses(results)
    print("\n".join(f"{r.name}: {r.status} - {r.detail}" for r in results))
    assert found["max_class_shift"] == "fail" and found["max_confidence_drop"] == "fail"
    assert found["max_error_rate"] != "fail" and found["max_slower_share"] != "fail"
    decision = decide(load_spec(None, {}), Step(1, 10, seconds=6), window("weak", 1))
    assert decision.verdict == "fail" and decision.reason.startswith("max_class_shift: class shift")


def test_a_pass_stands_for_the_rest_of_the_step_but_a_fail_is_still_seen():
    spec = load_spec(None, {})
    thin = window("healthy", 0.05)
    fresh = statuses(judge_sequential(spec, Step(1, 10), thin))
    passed = statuses(judge_sequential(spec, Step(1, 10, passed=frozenset(fresh) - {"max_p99_ms"}), thin))
    assert fresh["max_error_rate"] == "inconclusive" and passed["max_error_rate"] == "pass"
    weak = statuses(judge_sequential(spec, Step(1, 10, passed=frozenset(fresh)), window("weak", 1)))
    assert weak["max_class_shift"] == "fail"


def test_min_step_seconds_holds_a_step_whose_gates_all_passed():
    spec = load_spec(None, {"min_step_seconds": 30})
    early = decide(spec, Step(1, 10, seconds=10), window("healthy", 6))
    late = decide(spec, Step(1, 10, seconds=30), window("healthy", 6))
    print(early.reason, "|", late.reason)
    assert (early.verdict, early.outcome) == ("hold", "gathering") and "min_step_seconds" in early.reason
    assert late.verdict == "advance" and late.reason.startswith("every gate passed after 30s")


def test_at_100_percent_only_the_error_rate_is_compared_with_blue_over_the_earlier_steps():
    """Blue answers nothing at 100%: green's error rate is compared with blue's over the earlier steps; the model
    and latency comparisons were judged in the same spans before (against earlier spans a shift would be the
    traffic's mix moving: a live rollout under clients cycling through the data's rows, ordered by species, showed
    v1.2.0 a class shift of 0.17 from blue's earlier rows)."""
    reference = window("weak", 4).blue
    errors = {**RECORDED["weak"]["green"], "requests": 1000, "errors": 60, "rows": 940}
    at_100 = window(
        "weak",
        1,
        green=errors,
        blue={**RECORDED["weak"]["blue"], "requests": 0, "rows": 0},
        split=None,
        blue_reference=reference,
    )
    results = {r.name: r for r in judge_sequential(load_spec(None, {}), Step(4, 100), at_100)}
    assert results["max_error_rate"].status == "fail" and "blue 0.00% of" in results["max_error_rate"].detail
    for name in ("max_class_shift", "max_confidence_drop", "max_slower_share", "srm_p_value"):
        assert results[name].status == "skipped", results[name]
    assert "not judged at 100%" in results["max_class_shift"].detail


def test_without_per_request_latencies_the_latency_gates_say_so():
    bare = window("healthy", 3)
    bare = Window(replace(bare.green, latency_ms=None), bare.blue, bare.split)
    results = {r.name: r for r in judge_sequential(load_spec(None, {}), Step(1, 10), bare)}
    assert results["max_p99_ms"].status == "skipped" and "nginx's log" in results["max_p99_ms"].detail
    assert results["max_slower_share"].status == "inconclusive"


def test_the_shadow_gate_in_sequential_mode_decides_on_its_confidence_sequence():
    gated = load_spec(None, {"min_agreement": 0.9, "shadow_seconds": 10})
    assert judge_shadow(gated, {"rows_compared": 300, "rows_agreed": 230}).status == "fail"
    assert judge_shadow(gated, {"rows_compared": 2000, "rows_agreed": 1990}).status == "pass"
    assert judge_shadow(gated, {"rows_compared": 120, "rows_agreed": 115}).status == "inconclusive"
    assert gated.family_alpha() == pytest.approx(0.012), "the shadow gate counts in the family when it runs"


def test_the_family_error_rate_is_the_sum_of_the_live_gates():
    assert load_spec(None, {}).family_alpha() == pytest.approx(0.01)
    assert load_spec(None, {"dry_run": ["max_error_rate"]}).family_alpha() == pytest.approx(0.008)
    assert load_spec(None, {"max_accuracy_drop": 0.05}).family_alpha() == pytest.approx(0.012)
    assert load_spec(None, {}).step_alpha("max_error_rate") == pytest.approx(0.0005)
    assert load_spec(None, {"max_confidence_drop": 0.03}).gates.tolerance("max_confidence_drop") == 0.03


@pytest.mark.parametrize(
    "text,message",
    [
        ("gates: {max_error_rate: {alpha: 0}}", "gates.max_error_rate.alpha: Input should be greater than 0"),
        (
            "gates: {max_error_rate: {alpha: 0.7}}",
            "gates.max_error_rate.alpha: Input should be less than or equal to 0.5",
        ),
        ("gates: {srm_p_value: {alpha: -0.1}}", "gates.srm_p_value.alpha: Input should be greater than 0"),
        ("gates: {max_slower_share: {tolerance: 0.4}}", "gates.max_slower_share: tolerance must be within [0.5, 1]"),
        ("min_step_seconds: 60\nmax_step_seconds: 30", "min_step_seconds (60) is above max_step_seconds (30)"),
        ("mode: bayesian", "mode: Input should be 'sequential' or 'fixed'"),
    ],
)
def test_bad_sequential_values_are_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text + "\n")
    with pytest.raises(CanaryError) as refused:
        load_spec(path, {})
    print(refused.value)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_the_cli_refuses_a_bad_error_rate_before_it_touches_anything(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text("gates: {max_confidence_drop: {threshold: 0.1, alpha: 0.6}}\n")
    for args in (["--spec", str(spec)], ["--min-step-seconds", "60", "--max-step-seconds", "30"]):
        refused = canary_process(state, "rollout", *args)
        print(f"\n{args}: exit {refused.returncode}: {refused.stderr.strip()}")
        assert refused.returncode == 1 and "invalid rollout spec" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
        assert list(state.iterdir()) == [], "nothing written: the spec is refused before the stack is opened"


def regression_window(green_sd: float, rows: int, seed: int, labels: tuple[float, float] | None = None) -> Window:
    """A regressor's window: blue predicts N(153, 57) (the diabetes baseline of bench/regression_windows), green
    N(153, green_sd); with `labels`, each version's errors against true values as mean |error| per row."""
    import random

    from canary_kit.policy.stats import Errors

    rng = random.Random(seed)
    green = [rng.gauss(153, green_sd) for _ in range(rows)]
    blue = [rng.gauss(153, 57) for _ in range(9 * rows)]
    figures = {"requests": rows, "errors": 0, "rows": rows, "values": green, "latency_ms": {2: rows}}
    blue_figures = {"requests": 9 * rows, "errors": 0, "rows": 9 * rows, "values": blue, "latency_ms": {2: 9 * rows}}
    errors = None
    if labels:
        errors = {}
        for color, mae, n in (("green", labels[0], rows), ("blue", labels[1], 9 * rows)):
            absolute = [abs(rng.gauss(0, mae * 1.2533)) for _ in range(n)]  # |N(0, s)| has mean 0.798 s
            errors[color] = Errors(n, sum(absolute), sum(a * a for a in absolute), sum(a**4 for a in absolute))
    split = {"green": rows, "blue": 9 * rows}
    return Window(Figures.from_json(figures), Figures.from_json(blue_figures), split, task="regression", errors=errors)


def test_the_regression_gates_judge_a_regressor_sequentially():
    spec = load_spec(None, {"max_error_increase": 0.3})
    same = {r.name: r for r in judge_sequential(spec, Step(1, 10), regression_window(57, 1000, 1, (45, 45)))}
    narrow = {r.name: r for r in judge_sequential(spec, Step(1, 10), regression_window(14.6, 1000, 2, (57, 45)))}
    print("\n".join(f"{r.name}: {r.status} - {r.detail}" for r in [*same.values(), *narrow.values()]))
    assert "max_class_shift" not in same and "max_confidence_drop" not in same, "classifier gates skip a regressor"
    assert same["max_ks_distance"].status == "pass" and same["max_mean_shift"].status == "pass"
    assert same["max_error_increase"].status == "pass"
    assert narrow["max_ks_distance"].status == "fail" and narrow["max_error_increase"].status == "fail"
    assert narrow["max_mean_shift"].status != "fail", "the same mean: only its spread changed"
    decision = decide(spec, Step(1, 10, seconds=3), regression_window(14.6, 1000, 2))
    assert decision.verdict == "fail" and decision.reason.startswith("max_ks_distance: KS distance")
    assert load_spec(None, {}).family_alpha("regression") == pytest.approx(0.01)
