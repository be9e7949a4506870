"""What the model predicts, as Prometheus metrics beside BentoML's own on `/metrics`: the canary's quality gates
compare these figures between blue and green.

- `penguin_predicted_class_total{class}`: rows answered per predicted class (every class exported from the start);
- `penguin_prediction_confidence`: a histogram of each row's top-class probability (the model's confidence).

Both count the rows of `/predict` and `/predict_columns` alike. The canary tool finds them by these names in
`[tool.canary]` (class_metric, confidence_metric), never by importing this module.

A batch is recorded in a handful of calls, not one per row: the classes with one bincount, the confidences into
the histogram's buckets with one searchsorted (`observe_many`, exactly what per-row `observe` calls would give:
tests/test_prediction_metrics.py checks it against them).
"""

from __future__ import annotations

from bisect import bisect_left

import numpy as np

CLASS_METRIC = "penguin_predicted_class"
CONFIDENCE_METRIC = "penguin_prediction_confidence"
# The top-class probability of a 3-class model lies in [1/3, 1]: finer where a confident model lives.
CONFIDENCE_BUCKETS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

_made: dict[tuple[str, ...], PredictionMetrics] = {}


class PredictionMetrics:
    """The two metrics of one process, for a model's classes."""

    def __init__(self, classes: list[str], registry=None) -> None:
        # Imported here, in the worker: BentoML sets PROMETHEUS_MULTIPROC_DIR after the service module is imported,
        # and prometheus_client chooses its (multiprocess) value store when first imported.
        from prometheus_client import REGISTRY, Counter, Histogram

        registry = REGISTRY if registry is None else registry
        counter = Counter(CLASS_METRIC, "Rows answered by /predict, per predicted class", ["class"], registry=registry)
        self.per_class = [counter.labels(name) for name in classes]
        self.confidence = Histogram(
            CONFIDENCE_METRIC,
            "Top-class probability of each row answered by /predict",
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )
        # Batches go straight into the histogram's buckets (its `observe` internals, checked by the tests); were a
        # prometheus_client release to rename them, each row is observed on its own instead: slower, still right.
        self.bulk = all(hasattr(self.confidence, name) for name in ("_sum", "_buckets", "_upper_bounds"))
        self.bounds = np.array(getattr(self.confidence, "_upper_bounds", CONFIDENCE_BUCKETS))

    def record(self, top: np.ndarray, confidence: np.ndarray) -> None:
        """One answer: each row's predicted class index and its probability."""
        if len(top) == 1:
            self.record_one(int(top[0]), float(confidence[0]))
            return
        for child, rows in zip(self.per_class, np.bincount(top, minlength=len(self.per_class)).tolist()):
            if rows:
                child.inc(rows)
        self.observe_many(confidence)

    def record_rows(self, top: np.ndarray, proba: np.ndarray) -> None:
        """One answer from the model's output: each row's predicted class index and the rows' class probabilities.
        A single row (the common request) is read as plain numbers: an index array built to read one row's top
        probability cost ~2% of a busy worker's CPU (docs/benchmarks.md)."""
        if len(top) == 1:
            best = int(top[0])
            self.record_one(best, float(proba[0, best]))
            return
        self.record(top, proba[np.arange(len(top)), top])

    def record_one(self, top: int, confidence: float) -> None:
        """A single-row answer (the common request), from plain numbers: no array work at all."""
        self.per_class[top].inc()
        self.observe_one(confidence)

    def observe_one(self, value: float) -> None:
        histogram = self.confidence
        if not self.bulk:
            histogram.observe(value)
            return
        histogram._sum.inc(value)
        histogram._buckets[bisect_left(histogram._upper_bounds, value)].inc(1)

    def observe_many(self, values: np.ndarray) -> None:
        """Histogram.observe for every value, in one pass: a value goes to the first bucket whose bound is >= it."""
        histogram = self.confidence
        if not self.bulk:
            for value in values.tolist():
                histogram.observe(value)
            return
        histogram._sum.inc(float(values.sum()))
        counts = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.bounds))
        for bucket, rows in zip(histogram._buckets, counts.tolist()):
            if rows:
                bucket.inc(rows)


def prediction_metrics(classes: list[str]) -> PredictionMetrics:
    """This process's metrics for `classes`, made once (a registry refuses a metric registered twice)."""
    key = tuple(classes)
    if key not in _made:
        _made[key] = PredictionMetrics(classes)
    return _made[key]
