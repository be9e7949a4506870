"""The service's prediction metrics: a batch recorded in one pass gives exactly what per-row observations would
(this guards the use of prometheus_client's histogram internals), and a real `bentoml serve` counts every row it
answers on /predict, read back by the tool through the names in [tool.canary]."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from canary_kit.core.config import Settings
from canary_kit.observe.metrics import Snapshot
from conftest import bentoml_serve, data_rows
from penguin.prediction_metrics import CLASS_METRIC, CONFIDENCE_METRIC, PredictionMetrics

CLASSES = ["Adelie", "Chinstrap", "Gentoo"]


def test_a_batch_recorded_at_once_equals_one_observation_per_row():
    rng = np.random.default_rng(7)
    bounds = np.array([0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0])
    # values on every bucket bound (a value equal to a bound belongs to that bucket), and between them
    values = np.concatenate([bounds, rng.uniform(1 / 3, 1, 2000), [1 / 3, 0.4000000001]])
    top = rng.integers(0, 3, len(values))
    bulk, single = CollectorRegistry(), CollectorRegistry()
    fast, slow = PredictionMetrics(CLASSES, bulk), PredictionMetrics(CLASSES, single)
    assert fast.bulk, "prometheus_client's histogram no longer has the internals the batch path writes to"
    for start in range(0, len(values), 500):  # batches, and one single-row answer
        fast.record(top[start : start + 500], values[start : start + 500])
    fast.record(top[:1], values[:1])
    for t, v in zip([*top.tolist(), int(top[0])], [*values.tolist(), float(values[0])]):
        slow.per_class[t].inc()
        slow.confidence.observe(v)

    def lines(registry) -> tuple[list[str], float]:
        text = [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]
        total = next(line for line in text if line.startswith(f"{CONFIDENCE_METRIC}_sum"))
        return [line for line in text if line != total], float(total.split()[-1])

    (exact, total), (expected, expected_total) = lines(bulk), lines(single)
    assert exact == expected  # every class count and every bucket
    assert total == pytest.approx(expected_total, rel=1e-12)  # one sum added at once: the same up to rounding


@pytest.mark.integration
def test_a_served_backend_counts_every_row_it_answers(trained):
    names = Settings().prediction_metrics
    assert (names.class_metric, names.confidence_metric) == (CLASS_METRIC, CONFIDENCE_METRIC)
    rows = data_rows()
    with bentoml_serve(["service:PenguinClassifier"]) as url, httpx.Client(timeout=10) as client:
        before = Snapshot.parse(client.get(f"{url}/metrics").text, names)
        answers = [
            client.post(f"{url}/predict", json={"instances": rows[i : i + 50]}).json() for i in range(0, len(rows), 50)
        ]
        answers.append(client.post(f"{url}/predict", json={"instances": rows[:1]}).json())
        client.post(f"{url}/predict", json={"instances": [{"island": "Atlantis"}]})  # refused: counts no row
        after = Snapshot.parse(client.get(f"{url}/metrics").text, names)
    predicted = [p for a in answers for p in a["predictions"]]
    confidence = sum(max(p.values()) for a in answers for p in a["probabilities"])
    counted = {c: after.classes[c] - before.classes.get(c, 0) for c in CLASSES}
    print(
        f"\n{len(predicted)} rows answered; counted per class {counted}; confidence sum {confidence:.6f} "
        f"vs {after.confidence[0] - (before.confidence or (0, 0))[0]:.6f}"
    )
    assert before.classes == {c: 0.0 for c in CLASSES}  # every class exported from the start
    assert counted == {c: predicted.count(c) for c in CLASSES}
    assert after.confidence[1] - (before.confidence or (0, 0))[1] == len(predicted)
    assert after.confidence[0] - (before.confidence or (0, 0))[0] == pytest.approx(confidence, rel=1e-12)
