"""The rollout's decision as a pure function, on windows recorded from real stacks (tests/data/windows.json: real
nginx, real `bentoml serve`, keep-alive clients sending the data's rows), and the statistics behind the gates."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from canary_kit.policy.gates import Figures, Step, Window, decide, judge_shadow
from canary_kit.policy.spec import load_spec
from canary_kit.policy.stats import chi2_critical, js_distance, srm_p_value, wilson

RECORDED = json.loads((Path(__file__).parent / "data" / "windows.json").read_text())


def window(name: str, **changes) -> Window:
    """A recorded window, with some of its parts changed (figures given in their JSON form)."""
    recorded = RECORDED[name]
    fields = {**{key: recorded.get(key) for key in ("green", "blue", "split")}, **changes}
    for key in ("green", "blue", "blue_reference"):
        if isinstance(fields.get(key), dict):
            fields[key] = Figures.from_json(fields[key])
    return Window(**fields)


def spec(**overrides):
    """The committed spec in fixed mode: these windows are judged once each (tests/test_sequential.py judges the
    sequential mode)."""
    return load_spec(None, {"mode": "fixed", **overrides})


def test_a_healthy_window_advances_with_every_gate_passing():
    decision = decide(spec(), Step(1, RECORDED["healthy"]["weight"]), window("healthy"))
    print(decision)
    assert decision.verdict == "advance" and decision.outcome == "pass"
    assert {g.name: g.status for g in decision.gates} == {
        "max_error_rate": "pass",
        "max_p99_ms": "pass",
        "max_p99_ratio": "pass",
        "srm_p_value": "pass",
        "max_class_divergence": "pass",
        "max_confidence_drop": "pass",
    }


def test_a_weak_model_fails_on_class_divergence_then_rolls_back_or_pauses():
    weak, weight = window("weak"), RECORDED["weak"]["weight"]
    first = decide(spec(), Step(1, weight), weak)
    print(first)
    assert (first.verdict, first.outcome) == ("hold", "fail") and "failed check 1 of 2" in first.reason
    assert first.reason.startswith("class divergence") and "> 0.2" in first.reason
    assert [g.name for g in first.gates if g.status == "fail"] == ["max_class_divergence", "max_confidence_drop"]
    assert decide(spec(), Step(1, weight, failed=1), weak).verdict == "fail"
    assert decide(spec(on_failure="pause"), Step(1, weight, failed=1), weak).verdict == "pause"


def test_the_weak_model_in_dry_run_advances_and_keeps_its_failures_in_the_report():
    dry = spec(dry_run=["max_class_divergence", "max_confidence_drop"])
    decision = decide(dry, Step(1, RECORDED["weak"]["weight"]), window("weak"))
    assert decision.verdict == "advance" and "dry-run only: class divergence" in decision.reason
    assert [g.mark for g in decision.dry_run_failures] == ["fail (dry-run)", "fail (dry-run)"]


def test_a_skewed_split_fails_on_srm_before_the_model_is_judged():
    decision = decide(spec(), Step(1, RECORDED["skewed"]["weight"]), window("skewed"))
    print(decision)
    assert decision.outcome == "fail" and decision.reason.startswith("sample-ratio mismatch")


def test_a_quiet_window_holds_then_pauses():
    quiet, weight = window("quiet"), RECORDED["quiet"]["weight"]
    first = decide(spec(), Step(1, weight), quiet)
    print(first)
    assert (first.verdict, first.outcome) == ("hold", "inconclusive") and "only" in first.reason
    assert decide(spec(), Step(1, weight, inconclusive=2), quiet).verdict == "pause"


def test_at_100_percent_blue_is_compared_through_its_last_full_window():
    at_100 = window(
        "weak",
        blue={**RECORDED["weak"]["blue"], "rows": 0, "requests": 0, "class_rows": {}},
        split=None,
        blue_reference=RECORDED["weak"]["blue"],
    )
    decision = decide(spec(), Step(4, 100), at_100)
    assert decision.reason.startswith("class divergence"), decision
    assert {g.name: g.status for g in decision.gates}["srm_p_value"] == "skipped"


def test_blue_down_waits_then_pauses_and_the_spec_can_pause_at_once():
    down = window("healthy", blue_ready=False)
    assert decide(spec(), Step(2, 25), down).verdict == "hold"
    assert decide(spec(), Step(2, 25, blue_down_seconds=121), down).verdict == "pause"
    assert decide(spec(on_blue_down="pause"), Step(2, 25), down).verdict == "pause"


def test_a_service_without_prediction_metrics_skips_the_quality_gates():
    bare = {key: value for key, value in RECORDED["healthy"]["green"].items() if key not in ("rows", "class_rows")}
    blue = {key: value for key, value in RECORDED["healthy"]["blue"].items() if key not in ("rows", "class_rows")}
    decision = decide(spec(), Step(1, RECORDED["healthy"]["weight"]), window("healthy", green=bare, blue=blue))
    assert decision.verdict == "advance"
    assert {g.name: g.status for g in decision.gates}["max_class_divergence"] == "skipped"


@pytest.mark.parametrize("weight", [10, 25, 50])
def test_an_honest_split_passes_srm_in_20_of_20_seeded_windows(weight):
    rng = random.Random(weight)
    p_values = []
    for _ in range(20):
        total = rng.randint(300, 5000)
        green = sum(rng.random() < weight / 100 for _ in range(total))
        split = {"green": green, "blue": total - green}
        decision = decide(spec(), Step(1, weight), window("healthy", split=split))
        p_values.append(round(srm_p_value(green, total - green, weight / 100), 3))
        assert {g.name: g.status for g in decision.gates}["srm_p_value"] == "pass", (split, p_values)
    print(f"\n{weight}%: p-values {p_values}")


@pytest.mark.parametrize("green,total,weight", [(140, 1000, 10), (200, 1000, 25), (440, 1000, 50), (0, 400, 10)])
def test_a_split_off_by_a_few_points_fails_srm(green, total, weight):
    decision = decide(spec(), Step(1, weight), window("healthy", split={"green": green, "blue": total - green}))
    assert decision.outcome == "fail" and "sample-ratio mismatch" in decision.reason, decision


def test_the_statistics_match_scipy():
    for green, blue, share in [(120, 880, 0.1), (260, 740, 0.25), (480, 520, 0.5), (5, 95, 0.1)]:
        expected = scipy_stats.chisquare([green, blue], [(green + blue) * share, (green + blue) * (1 - share)]).pvalue
        assert srm_p_value(green, blue, share) == pytest.approx(expected, rel=1e-9)
    assert chi2_critical(0.001) == pytest.approx(scipy_stats.chi2.isf(0.001, 1), rel=1e-9)
    p, q = {"a": 157, "b": 64, "c": 123}, {"a": 218, "c": 126}
    from scipy.spatial.distance import jensenshannon

    assert js_distance(p, q) == pytest.approx(jensenshannon([157, 64, 123], [218, 0, 126], base=2), rel=1e-9)
    assert js_distance(p, p) == 0 and js_distance({"a": 1}, {"b": 1}) == pytest.approx(1.0)
    low, high = wilson(95, 100)
    assert (round(low, 4), round(high, 4)) == (0.8882, 0.9785)  # the Wilson score interval of 95/100
    assert wilson(0, 0) is None and wilson(10, 10)[1] == 1.0


def test_the_shadow_gate_judges_the_lower_bound_not_the_point():
    gated = spec(min_agreement=0.95)
    assert judge_shadow(gated, {"rows_compared": 100, "rows_agreed": 96}).status == "fail"  # 96%, bound 90.1%
    assert judge_shadow(gated, {"rows_compared": 5000, "rows_agreed": 4900}).status == "pass"  # 98%, bound 97.6%
    assert judge_shadow(gated, {"rows_compared": 20, "rows_agreed": 20}).status == "inconclusive"
    assert judge_shadow(spec(), {"rows_compared": 20, "rows_agreed": 20}).status == "skipped"
