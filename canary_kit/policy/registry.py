"""The gates, each declared once: what it measures, its threshold's range, its defaults, its option of `canary
rollout`, its label in reports and its metric on Kubernetes. The spec's gates, the command line, the report and the
AnalysisTemplates all read this table; a gate's judges (gates.py for the fixed mode, sequential.py for the
sequential one) register themselves under its name, and its PromQL builder (k8s/analysis.py) under its metric.

Adding a gate: one `declare(GateInfo(...))` here, its judge for each of its modes, and (with `argo`) its query.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

MODES = ("sequential", "fixed")
KINDS = ("http", "srm", "quality", "labels", "shadow")


@dataclass(frozen=True)
class Bounds:
    """The range of a gate's threshold (and tolerance): low to high, each end included or not."""

    low: float
    high: float
    low_in: bool = True
    high_in: bool = True

    def holds(self, value: float) -> bool:
        low_ok = value > self.low or (value == self.low and self.low_in)
        return low_ok and (value < self.high or (value == self.high and self.high_in))

    def __str__(self) -> str:
        return f"{'[' if self.low_in else '('}{self.low:g}, {self.high:g}{']' if self.high_in else ')'}"


@dataclass(frozen=True)
class GateInfo:
    """One gate, declared once.

    kind: which sample min_rows counts (green's requests for "http", the unpinned /predict requests for "srm", the
    rows each version predicted for "quality", labelled rows per version for "labels": a step may wait for them, the
    rows compared in the shadow phase for "shadow": judged once, before the first step). task: the model it judges
    (None: every model). threshold, min_rows, tolerance (sequential; None: one line, the threshold) and alpha
    (sequential): the defaults of a spec that leaves them out. modes: the modes that judge it (a judge for each).
    flag: the help of its option of `canary rollout` (`--max-error-rate`...; None: no option). argo: the name of its
    metric in the AnalysisTemplates (its query is built by k8s/analysis.py under that name; None: not on Kubernetes).
    """

    name: str
    what: str
    kind: str
    label: str
    bounds: Bounds
    threshold: float | None
    min_rows: int
    modes: tuple[str, ...] = MODES
    task: str | None = None
    tolerance: float | None = None
    alpha: float = 0.002
    flag: str | None = None
    argo: str | None = None


GATES: dict[str, GateInfo] = {}  # in the order the spec, the judges, the report and the options list them
_listeners: list[Callable[[], None]] = []


def declare(info: GateInfo) -> GateInfo:
    """Add a gate (after the others); whatever is built from the table is built again."""
    if info.name in GATES:
        raise ValueError(f"gate {info.name!r} is declared twice")
    if info.kind not in KINDS or not set(info.modes) <= set(MODES):
        raise ValueError(f"gate {info.name!r}: kind must be one of {KINDS} and modes within {MODES}")
    GATES[info.name] = info
    _changed()
    return info


def withdraw(name: str) -> None:
    """Remove a gate (a test's throwaway one)."""
    del GATES[name]
    _changed()


@contextmanager
def declared(info: GateInfo) -> Iterator[GateInfo]:
    """A gate declared for the time of a `with` block, withdrawn after it."""
    declare(info)
    try:
        yield info
    finally:
        withdraw(info.name)


def on_change(rebuild: Callable[[], None]) -> None:
    """Call `rebuild` whenever a gate is declared or withdrawn (the spec's model, the command's options)."""
    _listeners.append(rebuild)


def _changed() -> None:
    for rebuild in _listeners:
        rebuild()


def applies(name: str, task: str) -> bool:
    """Whether a gate judges a model of this task (the HTTP and split gates judge every model)."""
    wanted = GATES[name].task
    return wanted is None or wanted == task


def of_kind(kind: str) -> list[str]:
    return [name for name, info in GATES.items() if info.kind == kind]


declare(
    GateInfo(
        "max_error_rate",
        "green's share of 5xx answers (sequential: minus blue's in the same window)",
        "http",
        "5xx rate",
        Bounds(0, 1),
        threshold=0.01,
        min_rows=50,
        tolerance=0.002,
        flag="gate: green's 5xx share, e.g. 0.01",
        argo="error-rate",
    )
)
declare(
    GateInfo(
        "max_p99_ms",
        "green's p99 latency, in ms (sequential: its share of requests slower than this stays below 1%)",
        "http",
        "p99 ms",
        Bounds(0, 3_600_000, low_in=False),
        threshold=500.0,
        min_rows=50,
        alpha=0.001,
        flag="gate: green's p99 latency in ms",
        argo="p99-seconds",
    )
)
declare(
    GateInfo(
        "max_p99_ratio",
        "green's p99 over blue's",
        "http",
        "p99 ratio",
        Bounds(0, 1000, low_in=False),
        threshold=3.0,
        min_rows=50,
        modes=("fixed",),
        flag="gate (fixed): green p99 / blue p99",
        argo="p99-ratio",
    )
)
declare(
    GateInfo(
        "max_slower_share",
        "the share of (green, blue) request pairs of the same window in which green's took longer, ties counting "
        "half: 0.5 when both are as fast",
        "http",
        "slower",
        Bounds(0.5, 1),
        threshold=0.6,
        min_rows=50,
        modes=("sequential",),
        tolerance=0.55,
        flag="gate (sequential): share of request pairs in which green is slower",
    )
)
declare(
    GateInfo(
        "srm_p_value",
        "sample-ratio mismatch: the p-value below which the split is not the one set (fixed: chi-square per window; "
        "sequential: the always-valid p-value of the multinomial test, against alpha)",
        "srm",
        "SRM p",
        Bounds(0, 1, low_in=False, high_in=False),
        threshold=0.001,
        min_rows=100,
        alpha=0.001,
        flag="gate: split mismatch below this p-value fails",
        argo="sample-ratio",
    )
)
declare(
    GateInfo(
        "max_class_divergence",
        "Jensen-Shannon distance between green's and blue's predicted-class shares",
        "quality",
        "class div.",
        Bounds(0, 1),
        threshold=0.2,
        min_rows=200,
        modes=("fixed",),
        task="classification",
        flag="gate (fixed): JS distance of green's and blue's predicted-class shares",
        argo="class-divergence",
    )
)
declare(
    GateInfo(
        "max_class_shift",
        "total-variation distance between green's and blue's predicted-class shares (the share of rows whose class "
        "would have to change)",
        "quality",
        "class shift",
        Bounds(0, 1),
        threshold=0.15,
        min_rows=200,
        modes=("sequential",),
        task="classification",
        tolerance=0.05,
        flag="gate (sequential): total variation of the predicted-class shares",
    )
)
declare(
    GateInfo(
        "max_confidence_drop",
        "blue's mean top-class probability minus green's",
        "quality",
        "conf. drop",
        Bounds(0, 1),
        threshold=0.1,
        min_rows=200,
        task="classification",
        tolerance=0.05,
        flag="gate: blue's mean top-class probability minus green's",
        argo="confidence-drop",
    )
)
declare(
    GateInfo(
        "max_accuracy_drop",
        "labels sent back: blue's accuracy minus green's on the answers of this rollout (fixed: its 95% interval; "
        "min_rows: labelled rows per version)",
        "labels",
        "accuracy",
        Bounds(0, 1),
        threshold=None,
        min_rows=100,
        task="classification",
        tolerance=0.02,
        flag="gate on labels: blue's accuracy minus green's, with 95% confidence",
    )
)
declare(
    GateInfo(
        "min_agreement",
        "shadow phase: the lower bound of the share of rows on which both versions agree (fixed: 95% Wilson)",
        "shadow",
        "agreement",
        Bounds(0, 1),
        threshold=None,
        min_rows=100,
        task="classification",
        flag="shadow agreement (95% lower bound) to go live",
    )
)
declare(
    GateInfo(
        "max_ks_distance",
        "Kolmogorov-Smirnov distance between green's and blue's predicted values (sequential: bounded through both "
        "versions' time-uniform DKW bands)",
        "quality",
        "KS",
        Bounds(0, 1),
        threshold=0.25,
        min_rows=200,
        task="regression",
        tolerance=0.15,
        argo="ks-distance",
    )
)
declare(
    GateInfo(
        "max_mean_shift",
        "green's mean prediction minus blue's, in blue's standard deviations, either way (fixed: with 95% "
        "confidence; sequential: an asymptotic confidence sequence)",
        "quality",
        "mean shift",
        Bounds(0, 100, low_in=False),
        threshold=0.5,
        min_rows=200,
        task="regression",
        tolerance=0.25,
    )
)
declare(
    GateInfo(
        "max_error_increase",
        "labels sent back: green's mean absolute error over blue's, minus 1, on the answers of this rollout (fixed: "
        "with 95% confidence; sequential: an asymptotic confidence sequence; min_rows: labelled rows per version)",
        "labels",
        "MAE increase",
        Bounds(0, 100, low_in=False),
        threshold=None,
        min_rows=100,
        task="regression",
        tolerance=0.05,
    )
)
