"""A regressor judged without processes: the statistics (against SciPy where it has them, and by coverage where it
has not), the regression gates on recorded windows, the predictions read from log entries, and labels of true
values."""

from __future__ import annotations

import json
import random

import pytest

from canary_kit.observe import labels as labelling
from canary_kit.observe.answers import observed, predictions
from canary_kit.policy.gates import Figures, Step, Window, decide, judge_gates
from canary_kit.policy.spec import load_spec
from canary_kit.policy.stats import Errors, error_increase, ks_distance, ks_p_value, mean_shift

RID = "0123456789abcdef0123456789abcdef"


def test_ks_distance_and_its_p_value_agree_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    for shift, n, m in ((0.0, 200, 200), (0.3, 500, 300), (1.0, 50, 80)):
        a = [rng.gauss(0, 1) for _ in range(n)]
        b = [round(rng.gauss(shift, 1), 1) for _ in range(m)]  # ties, as a regressor's rounded answers have
        found = stats.ks_2samp(a, b, method="asymp")
        assert ks_distance(a, b) == pytest.approx(found.statistic, abs=1e-12)
        assert ks_p_value(found.statistic, n, m) == pytest.approx(found.pvalue, rel=0.15, abs=1e-4)


def test_the_mean_shift_interval_covers_the_true_shift_as_often_as_it_says():
    rng = random.Random(11)
    runs, covered = 2000, 0
    for _ in range(runs):
        blue = [rng.gauss(10, 2) for _ in range(200)]
        green = [rng.gauss(10.5, 2) for _ in range(200)]  # 0.25 of blue's sd
        _, low, high = mean_shift(green, blue)
        covered += low <= 0.25 <= high
    print(f"\n95% interval of the mean shift covered the true shift in {covered} of {runs} runs")
    # a correct interval covers 95%: 1,900 expected, sd ~10; blue's estimated sd as the unit widens it a little
    assert 1830 <= covered <= 1960


def test_the_error_increase_compares_maes_with_an_interval():
    blue = Errors(n=400, abs_sum=400 * 10.0, sq_sum=400 * 150.0, quad_sum=400 * 50000.0)
    worse = Errors(n=400, abs_sum=400 * 15.0, sq_sum=400 * 330.0, quad_sum=400 * 200000.0)
    increase, low, high = error_increase(worse, blue)
    assert increase == pytest.approx(0.5) and low > 0.3 and high < 0.7
    assert error_increase(Errors(), blue) is None
    assert blue.mae == 10.0 and blue.rmse == pytest.approx(150**0.5)
    low, high = blue.mae_interval()
    assert low < 10 < high


def window(green: list[float], blue: list[float], **more) -> Window:
    def figures(values: list[float]) -> Figures:
        return Figures(requests=len(values), error_rate=0.0, p50_ms=2.0, p99_ms=5.0, seconds=30, rows=len(values),
                       values=tuple(values))  # fmt: skip

    return Window(figures(green), figures(blue), task="regression", **more)


def test_a_regressor_is_judged_on_its_values_and_a_classifier_gate_never_runs():
    rng = random.Random(5)
    spec = load_spec(None, {"mode": "fixed"})  # the fixed mode's judges (tests/test_sequential.py: the sequential)
    blue = [rng.gauss(150, 50) for _ in range(400)]
    same = [rng.gauss(150, 50) for _ in range(400)]
    bunched = [rng.gauss(150, 14) for _ in range(400)]  # the worse diabetes version's spread
    biased = [rng.gauss(200, 50) for _ in range(400)]
    verdicts = {}
    for name, green in (("same", same), ("bunched", bunched), ("biased", biased)):
        results = {r.name: r for r in judge_gates(spec, 25, window(green, blue))}
        verdicts[name] = {k: r.status for k, r in results.items()}
        assert not {"max_class_divergence", "max_confidence_drop", "max_accuracy_drop"} & results.keys()
    print(f"\n{verdicts}")
    assert verdicts["same"]["max_ks_distance"] == "pass" and verdicts["same"]["max_mean_shift"] == "pass"
    assert verdicts["bunched"]["max_ks_distance"] == "fail"
    assert verdicts["biased"]["max_mean_shift"] == "fail" and verdicts["biased"]["max_ks_distance"] == "fail"
    decision = decide(spec, Step(1, 25, failed=1), window(bunched, blue))
    assert decision.verdict == "fail" and "KS distance of predicted values" in decision.reason
    assert "> 0.25" in decision.reason


def test_the_error_gate_waits_for_labels_then_judges():
    spec = load_spec(None, {"mode": "fixed", "max_error_increase": 0.1, "min_labels": 100})
    rng = random.Random(2)
    values = [rng.gauss(150, 50) for _ in range(300)]
    thin = {"green": Errors(10, 100.0, 1500.0, 5e5), "blue": Errors(10, 100.0, 1500.0, 5e5)}
    waiting = decide(spec, Step(1, 25, seconds=5), window(values, values, errors=thin))
    assert waiting.verdict == "hold" and waiting.outcome == "awaiting-labels"
    worse = {
        "green": Errors(400, 400 * 15.0, 400 * 330.0, 400 * 2e5),
        "blue": Errors(400, 400 * 10.0, 400 * 150.0, 400 * 5e4),
    }
    failed = decide(spec, Step(1, 25, failed=1), window(values, values, errors=worse))
    assert failed.verdict == "fail" and "MAE green 15 vs blue 10" in failed.reason


def entry(predictions_text: str, version: str = "v2", **more) -> dict:
    return {"request_id": RID, "time": "2026-12-07T10:00:00+00:00", "path": "/predict", "status": 200,
            "version": version, "predictions": predictions_text, **more}  # fmt: skip


def test_a_regressors_predictions_are_numbers_and_anything_else_is_unobserved():
    rows = predictions(entry("[152.3, 7]"), "regression")
    assert [r.value for r in rows] == [152.3, 7.0] and [r.predicted for r in rows] == ["152.3", "7"]
    assert predictions(entry('["a"]'), "regression") is None
    assert predictions(entry("[true]"), "regression") is None
    assert predictions(entry(""), "regression") is None
    seen = observed([entry("[1.5]"), entry('["x"]'), entry("[2.5]", pin="green")], {"green": "v2"}, task="regression")
    assert seen["green"].values == [1.5, 2.5] and seen["green"].unobserved == 1
    unpinned = observed([entry("[1.5]"), entry("[2.5]", pin="green")], {"green": "v2"}, task="regression", pinned=False)
    assert unpinned["green"].values == [1.5]


def test_a_classifiers_predictions_keep_their_confidences():
    rows = predictions(entry('["a", 2]', confidence="[0.9, 0.6]"))
    assert [(r.predicted, r.confidence) for r in rows] == [("a", 0.9), ("2", 0.6)]


def test_labels_of_a_regressor_are_true_values():
    good = f"request_id,label\n{RID},152.5\n".encode()
    parsed = labelling.parse(good, set(), "regression")
    assert not parsed.refused and parsed.labels[0].label == "152.5"
    lines = [json.dumps({"request_id": RID, "label": label, "row": i}) for i, label in enumerate([3, "nan", "x", True])]
    parsed = labelling.parse("\n".join(lines).encode(), set(), "regression")
    assert [label.label for label in parsed.labels] == ["3.0"]
    assert [n for n, _ in parsed.refused] == [2, 3, 4], parsed.refused
