"""What a rollout's decision reads and returns, as data: where the rollout is (Step), both versions' figures
(Window), each gate's verdict with its evidence (GateResult) and the verdict of the whole (Decision). No logic beyond
adding figures up: gates.py decides, driver.py walks the steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from canary_kit.policy.stats import Errors


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
    """Both versions' figures (metrics.Figures as dicts, with `latency_ms`: {ms: answers} from nginx's log where it
    was read; None: that backend's /metrics did not answer), the unpinned /predict answers by color (None: not
    measured), and the health checks. Fixed mode: one hold's window; sequential: everything since the step began."""

    green: dict | None
    blue: dict | None
    split: dict[str, int] | None = None
    green_ready: bool = True
    blue_ready: bool = True
    blue_reference: dict | None = None  # blue's figures from before, to compare with at 100% (fixed: its last full
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


COUNTS = ("requests", "errors", "rows")


def merge(a: dict | None, b: dict | None) -> dict | None:
    """Two spans of one version's figures as one: counts, class rows, latency and confidence (weighted by rows)
    added up; p50/p99 kept from the later one (they cannot be added)."""
    if a is None or b is None:
        return b if a is None else a
    out = dict(b)
    for key in COUNTS:
        if a.get(key) is not None or b.get(key) is not None:
            out[key] = (a.get(key) or 0) + (b.get(key) or 0)
    out["error_rate"] = out["errors"] / out["requests"] if out.get("requests") else None
    if a.get("values") is not None or b.get("values") is not None:  # a regressor's predicted values
        out["values"] = [*(a.get("values") or []), *(b.get("values") or [])]
    for key in ("class_rows", "latency_ms"):
        if a.get(key) is not None or b.get(key) is not None:
            summed = dict(a.get(key) or {})
            for name, n in (b.get(key) or {}).items():
                summed[name] = summed.get(name, 0) + n
            out[key] = summed
    means: list[tuple[float, int]] = [
        (x["confidence_mean"], x.get("rows") or 0) for x in (a, b) if x.get("confidence_mean") is not None
    ]
    if means and sum(n for _, n in means) > 0:
        out["confidence_mean"] = sum(m * n for m, n in means) / sum(n for _, n in means)
    out["seconds"] = (a.get("seconds") or 0) + (b.get("seconds") or 0)
    return out
