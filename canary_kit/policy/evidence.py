"""What a rollout's decision reads and returns, as data: where the rollout is (Step), one version's figures over a
span (Figures), both versions' (Window), each gate's verdict with its evidence (GateResult) and the verdict of the
whole (Decision). No logic beyond adding figures up: gates.py decides, driver.py walks the steps.

Figures are typed from where they are measured (observe/metrics.py, answers.py, the live plant) to the gates; they
become JSON only at the edges (a rollout's report and current.json, `canary status`, recorded test windows):

    Figures.from_json({"requests": 624, "errors": 0, ...}).to_json() == {"requests": 624, "errors": 0, ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from canary_kit.policy.stats import Errors

BASE = ("requests", "errors", "error_rate", "p50_ms", "p99_ms", "seconds", "rows", "class_rows", "confidence_mean")


@dataclass(frozen=True)
class Figures:
    """One version over one span: HTTP figures (from its /metrics, or its tries over the split's traffic), what it
    predicted (from its metrics or its answers), and each answer's time from nginx's log where it was read."""

    requests: int = 0
    errors: int = 0  # 5xx answers
    error_rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    seconds: float = 0.0
    rows: int | None = None  # rows predicted (None: no prediction figures)
    class_rows: dict[str, int] | None = None  # rows per predicted class
    confidence_mean: float | None = None  # mean top-class probability of those rows
    unobserved: int | None = None  # answers whose predictions nginx could not read (None: answers not read)
    values: tuple[float, ...] | None = None  # a regressor's predicted values, for its gates (never written out)
    value_mean: float | None = None
    value_sd: float | None = None
    regressor: bool = False  # a regressor's answers were read: value_mean and value_sd are figures (None: < 2 values)
    latency_ms: dict[int, int] | None = None  # {ms: answers}, from nginx's log (never written into a report)

    def to_json(self) -> dict[str, Any]:
        """The JSON form: the base figures always; the others where they were measured."""
        data: dict[str, Any] = {key: getattr(self, key) for key in BASE}
        if self.unobserved is not None:
            data["unobserved"] = self.unobserved
        if self.values is not None:
            data["values"] = list(self.values)
        if self.regressor:
            data["value_mean"], data["value_sd"] = self.value_mean, self.value_sd
        if self.latency_ms is not None:
            data["latency_ms"] = self.latency_ms
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Figures:
        """Figures from their JSON form (an unknown key is refused: TypeError)."""
        fields = dict(data)
        if "value_mean" in fields or "value_sd" in fields:
            fields["regressor"] = True
        if fields.get("values") is not None:
            fields["values"] = tuple(fields["values"])
        if fields.get("latency_ms") is not None:
            fields["latency_ms"] = {int(ms): n for ms, n in fields["latency_ms"].items()}
        return cls(**fields)

    def bare(self) -> Figures:
        """Without the per-answer parts (latencies, predicted values): what a report keeps, and blue's reference
        at 100% (its error rate) needs."""
        return replace(self, latency_ms=None, values=None)


@dataclass(frozen=True)
class Step:
    """Where the rollout is: the step, the weight set, and what earlier looks counted."""

    number: int
    weight: int
    failed: int = 0  # failed checks so far, in the whole rollout
    inconclusive: int = 0  # fixed: inconclusive windows so far, at this step
    blue_down_seconds: float = 0.0  # how long blue has been seen down (0: it is up)
    seconds: float = 0.0  # how long this step has been held with blue up (the wait for labels; min/max step time)
    passed: frozenset[str] = frozenset()  # sequential: gates that passed at this step (a pass stands)


@dataclass(frozen=True)
class Window:
    """Both versions' figures (None: that backend's /metrics did not answer), the unpinned /predict answers by color
    (None: not measured), and the health checks. Fixed mode: one hold's window; sequential: everything since the step
    began."""

    green: Figures | None
    blue: Figures | None
    split: dict[str, int] | None = None
    green_ready: bool = True
    blue_ready: bool = True
    blue_reference: Figures | None = None  # blue's figures from before, to compare with at 100% (fixed: its last full
    # window; sequential: its figures over the rollout's earlier steps)
    labels: dict[str, tuple[int, int]] | None = None  # color -> (labelled, correct) over this rollout's answers
    task: str = "classification"  # or "regression": which model gates apply
    errors: dict[str, Errors] | None = None  # color -> a regressor's errors on this rollout's labelled answers


@dataclass
class GateResult:
    """One gate over one look: pass | fail | inconclusive | skipped, the figure, and (sequential) the interval it is
    known to lie in and the lines it is judged against: it fails once `low` is beyond `tolerance`, passes once `high`
    is within `threshold` (for min_agreement and srm, one line)."""

    name: str
    status: str
    figure: float | None
    threshold: float | None
    dry_run: bool
    detail: str
    low: float | None = None
    high: float | None = None
    tolerance: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def mark(self) -> str:
        return f"{self.status} (dry-run)" if self.dry_run and self.status != "skipped" else self.status


@dataclass
class Decision:
    verdict: str  # advance | hold | fail | pause
    outcome: str  # the look itself: pass | fail | inconclusive | blue-down | awaiting-labels | gathering
    reason: str
    gates: list[GateResult] = field(default_factory=list)

    @property
    def dry_run_failures(self) -> list[GateResult]:
        return [g for g in self.gates if g.dry_run and g.status == "fail"]


K = TypeVar("K")


def _summed(a: dict[K, int] | None, b: dict[K, int] | None) -> dict[K, int] | None:
    if a is None and b is None:
        return None
    summed = dict(a or {})
    for name, n in (b or {}).items():
        summed[name] = summed.get(name, 0) + n
    return summed


def merge(a: Figures | None, b: Figures | None) -> Figures | None:
    """Two spans of one version's figures as one: counts, class rows, latency and confidence (weighted by rows)
    added up; p50/p99 kept from the later one (they cannot be added)."""
    if a is None or b is None:
        return b if a is None else a
    requests, errors = a.requests + b.requests, a.errors + b.errors
    means: list[tuple[float, int]] = [(x.confidence_mean, x.rows or 0) for x in (a, b) if x.confidence_mean is not None]
    confidence = b.confidence_mean
    if means and sum(n for _, n in means) > 0:
        confidence = sum(m * n for m, n in means) / sum(n for _, n in means)
    return replace(
        b,
        requests=requests,
        errors=errors,
        rows=None if a.rows is None and b.rows is None else (a.rows or 0) + (b.rows or 0),
        error_rate=errors / requests if requests else None,
        values=None if a.values is None and b.values is None else (*(a.values or ()), *(b.values or ())),
        class_rows=_summed(a.class_rows, b.class_rows),
        latency_ms=_summed(a.latency_ms, b.latency_ms),
        confidence_mean=confidence,
        seconds=a.seconds + b.seconds,
    )
