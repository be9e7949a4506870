"""Every judge's every verdict, on windows built by hand (tests/test_gates.py and tests/test_sequential.py judge
recorded and simulated ones): what each gate says when a side is missing, thin, constant, fine or beyond its lines,
in both modes. No process."""

from __future__ import annotations

import pytest

from canary_kit.policy.evidence import Figures, Step, Window
from canary_kit.policy.gates import decide, judge_gates, judge_shadow
from canary_kit.policy.sequential import judge_agreement, judge_sequential
from canary_kit.policy.spec import load_spec
from canary_kit.policy.stats import Errors


def figures(n: int = 1000, **changes) -> Figures:
    """A version's figures over n requests, one row each, half class A, half B."""
    out = {
        "requests": n,
        "errors": 0,
        "error_rate": 0.0,
        "p50_ms": 2.0,
        "p99_ms": 10.0,
        "rows": n,
        "class_rows": {"A": n // 2, "B": n - n // 2},
        "confidence_mean": 0.9,
        "latency_ms": {2: n},
    }
    return Figures.from_json({**out, **changes})


def window(green: Figures | None = None, blue: Figures | None = None, weight: int = 10, **changes) -> Window:
    green = figures(1000) if green is None else green
    blue = figures(9000) if blue is None else blue
    split = {"green": round(10_000 * weight / 100), "blue": 10_000 - round(10_000 * weight / 100)}
    return Window(**{"green": green, "blue": blue, "split": split, **changes})


def values(n: int, mean: float = 0.0, spread: float = 1.0) -> list[float]:
    return [mean + spread * ((i % 21) - 10) / 10 for i in range(n)]


def regression(green_values, blue_values, errors=None) -> Window:
    green = figures(len(green_values), values=green_values)
    blue = figures(len(blue_values), values=blue_values)
    return window(green, blue, task="regression", errors=errors)


def fixed(name: str, w: Window, weight: int = 10, **overrides):
    found = {r.name: r for r in judge_gates(load_spec(None, {"mode": "fixed", **overrides}), weight, w)}
    return found[name]


def sequential(name: str, w: Window, weight: int = 10, **overrides):
    found = {r.name: r for r in judge_sequential(load_spec(None, overrides), Step(1, weight), w)}
    return found[name]


FIXED = [
    ("max_error_rate", window(figures(1000, errors=100, error_rate=0.1)), {}, "fail", "answered 100 of 1000"),
    ("max_error_rate", window(figures(10)), {}, "inconclusive", "only 10 green requests"),
    ("max_p99_ms", window(figures(1000, p99_ms=900.0)), {}, "fail", "green p99 900 ms > 500 ms"),
    ("max_p99_ratio", window(figures(1000, p99_ms=100.0)), {}, "fail", "10.0x blue's (> 3.0x)"),
    ("max_p99_ratio", window(blue=figures(0, p99_ms=None)), {}, "skipped", "blue served no requests"),
    ("max_p99_ratio", window(figures(10)), {}, "inconclusive", "only 10 green requests"),
    ("srm_p_value", window(split=None), {}, "skipped", "the split was not measured"),
    ("srm_p_value", window(weight=100), {"weight": 100}, "skipped", "no split to test at 100%"),
    ("srm_p_value", window(split={"green": 5, "blue": 45}), {}, "inconclusive", "only 50 unpinned"),
    ("srm_p_value", window(split={"green": 500, "blue": 500}), {}, "fail", "sample-ratio mismatch"),
    ("max_class_divergence", window(figures(1000, rows=None)), {}, "inconclusive", "no predictions seen from green"),
    ("max_class_divergence", window(blue=figures(9000, rows=None)), {}, "inconclusive", "seen from blue"),
    ("max_class_divergence", window(figures(10), figures(10)), {}, "inconclusive", "only 10 green / 10 blue rows"),
    (
        "max_class_divergence",
        window(figures(1000, class_rows={}), figures(9000, class_rows={})),
        {},
        "inconclusive",
        "no class counts",
    ),
    ("max_class_divergence", window(figures(1000, class_rows={"A": 1000})), {}, "fail", "> 0.2"),
    ("max_confidence_drop", window(figures(1000, confidence_mean=None)), {}, "inconclusive", "no confidence figures"),
    ("max_confidence_drop", window(figures(1000, confidence_mean=0.5)), {}, "fail", "confidence drop 0.400"),
]


@pytest.mark.parametrize("name,w,given,status,detail", FIXED)
def test_each_fixed_judge_says_why(name, w, given, status, detail):
    result = fixed(name, w, given.get("weight", 10))
    print(result.detail)
    assert (result.status, detail in result.detail) == (status, True)


def test_the_accuracy_gate_waits_for_labels_then_passes_fails_or_cannot_tell_yet():
    def accuracy(green, blue):
        return fixed("max_accuracy_drop", window(labels={"green": green, "blue": blue}), max_accuracy_drop=0.05)

    assert accuracy((50, 49), (500, 490)).detail.startswith("waiting for labels: 50 green / 500 blue")
    assert accuracy((2000, 1960), (2000, 1960)).status == "pass"
    assert accuracy((2000, 1500), (2000, 1960)).status == "fail"
    assert accuracy((150, 140), (150, 140)).status == "inconclusive"


def test_the_fixed_regression_judges_say_why():
    spec = {"max_error_increase": 0.1}
    same, spread = values(400), values(400, spread=3.0)
    thin = window(figures(1000, rows=None), task="regression")
    assert fixed("max_ks_distance", thin, **spec).detail == "no predictions seen from green"
    assert fixed("max_mean_shift", thin, **spec).detail == "no predictions seen from green"
    no_values = window(task="regression")
    assert fixed("max_ks_distance", no_values, **spec).status == "skipped"
    empty = window(figures(1000, values=[]), figures(9000, values=[]), task="regression")
    assert fixed("max_ks_distance", empty, **spec).detail == "no predicted values in the window"
    assert fixed("max_mean_shift", regression(same, [1.0] * 400), **spec).detail.startswith("blue's predictions do")
    assert fixed("max_mean_shift", regression(values(400, mean=2.0), same), **spec).status == "fail"
    assert fixed("max_mean_shift", regression(values(400, mean=0.32), values(400)), **spec).status == "inconclusive"
    assert fixed("max_ks_distance", regression(spread, same), **spec).status == "fail"
    exact = {"green": Errors(200, 200.0, 400.0, 1600.0), "blue": Errors(200, 0.0, 0.0, 0.0)}
    assert fixed("max_error_increase", regression(same, same, exact), **spec).detail.startswith("no error to compare")
    close = {"green": Errors(5000, 5000.0, 6000.0, 9000.0), "blue": Errors(5000, 5000.0, 6000.0, 9000.0)}
    assert fixed("max_error_increase", regression(same, same, close), **spec).status == "pass"
    unsure = {"green": Errors(200, 220.0, 300.0, 600.0), "blue": Errors(200, 200.0, 260.0, 500.0)}
    assert fixed("max_error_increase", regression(same, same, unsure), **spec).status == "inconclusive"


def test_decide_without_green_figures_counts_a_failed_check_and_judges_no_gate():
    spec = load_spec(None, {"mode": "fixed"})
    decision = decide(spec, Step(1, 10), Window(None, figures(9000)))
    assert (decision.verdict, decision.reason) == ("hold", "green's /metrics did not answer (failed check 1 of 2)")
    assert judge_gates(spec, 10, Window(None, figures(9000))) == []


SEQUENTIAL = [
    ("max_error_rate", window(figures(0, latency_ms={})), {}, "inconclusive", "no green requests yet"),
    ("max_error_rate", window(blue=figures(0)), {}, "pass", "blue served nothing: green's own rate"),
    ("max_p99_ms", window(figures(1000, latency_ms={900: 1000})), {}, "fail", "above 1% (p99 too slow)"),
    ("max_p99_ms", window(figures(1000, latency_ms=None)), {}, "skipped", "no per-request latencies"),
    ("max_p99_ms", window(figures(1000, latency_ms={2: 0, 900: 0})), {}, "inconclusive", "no green request timed yet"),
    ("srm_p_value", window(split={"green": 5000, "blue": 5000}), {}, "fail", "sample-ratio mismatch"),
    ("max_class_shift", window(figures(1000, rows=None), figures(9000, rows=None)), {}, "skipped", "exports no"),
    ("max_class_shift", window(figures(1000, rows=0)), {}, "inconclusive", "no rows predicted by green yet"),
    ("max_class_shift", window(blue=figures(9000, rows=0)), {}, "inconclusive", "no rows predicted by blue yet"),
    (
        "max_class_shift",
        window(figures(1000, class_rows={}), figures(9000, class_rows={})),
        {},
        "inconclusive",
        "no class counts yet",
    ),
    ("max_confidence_drop", window(figures(1000, confidence_mean=None)), {}, "inconclusive", "no confidence"),
    (
        "max_accuracy_drop",
        window(labels={"green": (20, 19), "blue": (200, 190)}),
        {"max_accuracy_drop": 0.05},
        "inconclusive",
        "waiting for labels: accuracy",
    ),
]


@pytest.mark.parametrize("name,w,given,status,detail", SEQUENTIAL)
def test_each_sequential_judge_says_why(name, w, given, status, detail):
    result = sequential(name, w, **given)
    print(result.detail)
    assert (result.status, detail in result.detail) == (status, True)


def test_the_sequential_regression_judges_say_why():
    spec = {"max_error_increase": 0.1}
    same = values(2000)
    at_100 = sequential("max_ks_distance", regression(same, same), weight=100, **spec)
    assert at_100.status == "skipped" and at_100.detail.startswith("not judged at 100%")
    assert sequential("max_ks_distance", window(task="regression"), **spec).status == "skipped"
    one_side = regression(same, [])
    assert sequential("max_ks_distance", one_side, **spec).detail == "no values predicted by blue yet"
    assert sequential("max_mean_shift", one_side, **spec).detail == "no values predicted by blue yet"
    assert sequential("max_mean_shift", regression(same, [1.0] * 2000), **spec).detail.startswith("blue's")
    assert sequential("max_mean_shift", regression(values(2000, mean=3.0), same), **spec).status == "fail"
    assert sequential("max_mean_shift", regression(values(50, mean=0.3), values(50)), **spec).status == "inconclusive"
    exact = {"green": Errors(200, 200.0, 400.0, 1600.0), "blue": Errors(200, 0.0, 0.0, 0.0)}
    assert sequential("max_error_increase", regression(same, same, exact), **spec).detail.startswith("no error")
    few = {"green": Errors(20, 20.0, 30.0, 60.0), "blue": Errors(20, 20.0, 30.0, 60.0)}
    thin = sequential("max_error_increase", regression(same, same, few), **spec)
    assert thin.status == "inconclusive" and thin.detail.startswith("waiting for labels: MAE")


def test_the_shadow_gate_before_any_row_and_below_its_sample():
    spec = load_spec(None, {"min_agreement": 0.9, "shadow_seconds": 10})
    assert judge_agreement(spec, 0, 0) == ("inconclusive", None, None, "no rows compared in the shadow phase yet")
    thin = judge_shadow(spec, {"rows_compared": 50, "rows_agreed": 50})
    assert thin.status == "inconclusive" and thin.detail.startswith("only 50 rows compared in the shadow phase")


def test_figures_keep_their_json_form_and_refuse_a_misspelt_figure():
    """The edges: recorded windows, reports and `canary status` keep the JSON they always had (key order too), and
    a figure the type does not have is refused instead of being read as missing."""
    import json
    from pathlib import Path

    recorded = json.loads((Path(__file__).parent / "data" / "windows.json").read_text())
    for name, found in recorded.items():
        for color in ("green", "blue"):
            assert json.dumps(Figures.from_json(found[color]).to_json()) == json.dumps(found[color]), (name, color)
    answered = {**recorded["healthy"]["green"], "unobserved": 2, "values": [1.5, 2.5], "value_mean": None}
    answered |= {"value_sd": None, "latency_ms": {"2": 600, "5": 24}}
    figures = Figures.from_json(answered)
    assert figures.regressor and figures.values == (1.5, 2.5) and figures.latency_ms == {2: 600, 5: 24}
    assert json.dumps(figures.to_json()) == json.dumps(answered)
    assert list(figures.bare().to_json()) == [*recorded["healthy"]["green"], "unobserved", "value_mean", "value_sd"]
    with pytest.raises(TypeError, match="p99ms"):
        Figures.from_json({**recorded["healthy"]["green"], "p99ms": 9.5})


def test_merged_figures_add_counts_and_weigh_confidence_by_rows():
    from canary_kit.policy.evidence import merge

    a = figures(1000, confidence_mean=0.8, latency_ms={2: 1000}, seconds=5.0)
    b = figures(3000, errors=30, confidence_mean=0.9, latency_ms={2: 2000, 3: 1000}, p99_ms=12.0, seconds=5.0)
    both = merge(a, b)
    assert (both.requests, both.errors, both.rows, both.error_rate) == (4000, 30, 4000, 30 / 4000)
    assert both.class_rows == {"A": 2000, "B": 2000} and both.latency_ms == {2: 3000, 3: 1000}
    assert both.confidence_mean == pytest.approx(0.875) and (both.p99_ms, both.seconds) == (12.0, 10.0)
    assert merge(None, b) is b and merge(a, None) is a
    quiet = merge(figures(0, rows=0, confidence_mean=0.5), figures(0, rows=0, confidence_mean=0.7, values=[1.0]))
    assert (quiet.confidence_mean, quiet.error_rate, quiet.values) == (0.7, None, (1.0,))  # no rows: the later mean
    bare = merge(Figures(), Figures())
    assert (bare.rows, bare.class_rows, bare.latency_ms, bare.values) == (None, None, None, None)
