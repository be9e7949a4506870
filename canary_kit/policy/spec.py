"""The rollout plan (`canary_kit/rollout.yaml`, or a copy given with --spec): steps, holds, the evidence a window
needs, what a failure does, and the gates. One typed object; a bad value is refused before anything changes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from canary_kit.core.errors import CanaryError, describe

DEFAULT_SPEC = Path(__file__).parents[1] / "rollout.yaml"  # canary_kit/rollout.yaml
MODES = ("sequential", "fixed")


@dataclass(frozen=True)
class GateInfo:
    """What a gate is, declared once: what it measures, the range of its threshold as (low, high, low included,
    high included), its kind (which sample min_rows counts: green's requests for "http", the unpinned /predict
    requests for "srm", the rows each version predicted for "quality", labelled rows per version for "labels", the
    rows compared in the shadow phase for "shadow"), the modes that judge it, its label in reports, and for a
    sequential gate the default of its tolerance (None: one line, the threshold) and of its error rate."""

    what: str
    bounds: tuple[float, float, bool, bool]
    kind: str
    label: str
    modes: tuple[str, ...] = MODES
    tolerance: float | None = None
    alpha: float = 0.002


GATES: dict[str, GateInfo] = {
    "max_error_rate": GateInfo(
        "green's share of 5xx answers (sequential: minus blue's in the same window)",
        (0, 1, True, True),
        "http",
        "5xx rate",
        tolerance=0.002,
    ),
    "max_p99_ms": GateInfo(
        "green's p99 latency, in ms (sequential: its share of requests slower than this stays below 1%)",
        (0, 3_600_000, False, True),
        "http",
        "p99 ms",
        alpha=0.001,
    ),
    "max_p99_ratio": GateInfo("green's p99 over blue's", (0, 1000, False, True), "http", "p99 ratio", ("fixed",)),
    "max_slower_share": GateInfo(
        "the share of (green, blue) request pairs of the same window in which green's took longer, ties counting "
        "half: 0.5 when both are as fast",
        (0.5, 1, True, True),
        "http",
        "slower",
        ("sequential",),
        tolerance=0.55,
    ),
    "srm_p_value": GateInfo(
        "sample-ratio mismatch: the p-value below which the split is not the one set (fixed: chi-square per window; "
        "sequential: the always-valid p-value of the multinomial test, against alpha)",
        (0, 1, False, False),
        "srm",
        "SRM p",
        alpha=0.001,
    ),
    "max_class_divergence": GateInfo(
        "Jensen-Shannon distance between green's and blue's predicted-class shares",
        (0, 1, True, True),
        "quality",
        "class div.",
        ("fixed",),
    ),
    "max_class_shift": GateInfo(
        "total-variation distance between green's and blue's predicted-class shares (the share of rows whose class "
        "would have to change)",
        (0, 1, True, True),
        "quality",
        "class shift",
        ("sequential",),
        tolerance=0.05,
    ),
    "max_confidence_drop": GateInfo(
        "blue's mean top-class probability minus green's", (0, 1, True, True), "quality", "conf. drop", tolerance=0.05
    ),
    "max_accuracy_drop": GateInfo(
        "labels sent back: blue's accuracy minus green's on the answers of this rollout (fixed: its 95% interval; "
        "min_rows: labelled rows per version)",
        (0, 1, True, True),
        "labels",
        "accuracy",
        tolerance=0.02,
    ),
    "min_agreement": GateInfo(
        "shadow phase: the lower bound of the share of rows on which both versions agree (fixed: 95% Wilson)",
        (0, 1, True, True),
        "shadow",
        "agreement",
    ),
    "max_ks_distance": GateInfo(
        "Kolmogorov-Smirnov distance between green's and blue's predicted values (sequential: bounded through both "
        "versions' time-uniform DKW bands)",
        (0, 1, True, True),
        "quality",
        "KS",
        tolerance=0.15,
    ),
    "max_mean_shift": GateInfo(
        "green's mean prediction minus blue's, in blue's standard deviations, either way (fixed: with 95% "
        "confidence; sequential: an asymptotic confidence sequence)",
        (0, 100, False, True),
        "quality",
        "mean shift",
        tolerance=0.25,
    ),
    "max_error_increase": GateInfo(
        "labels sent back: green's mean absolute error over blue's, minus 1, on the answers of this rollout (fixed: "
        "with 95% confidence; sequential: an asymptotic confidence sequence; min_rows: labelled rows per version)",
        (0, 100, False, True),
        "labels",
        "MAE increase",
        tolerance=0.05,
    ),
}
CLASSIFIER_GATES = (
    "max_class_divergence",
    "max_class_shift",
    "max_confidence_drop",
    "max_accuracy_drop",
    "min_agreement",
)
REGRESSOR_GATES = ("max_ks_distance", "max_mean_shift", "max_error_increase")
LABEL_GATES = ("max_accuracy_drop", "max_error_increase")  # judged on labels sent back: a step may wait for them


def applies(name: str, task: str) -> bool:
    """Whether a gate judges a model of this task (the HTTP and split gates judge every model)."""
    if name in CLASSIFIER_GATES:
        return task == "classification"
    return task == "regression" if name in REGRESSOR_GATES else True


class Gate(BaseModel):
    """One gate: its threshold (None: off), the sample below which it cannot pass, whether it only reports, and in
    sequential mode its error rate and its tolerance (None: the gate's default, never above the threshold)."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(None, allow_inf_nan=False, strict=True)  # strict: `true` is no threshold
    min_rows: int = Field(1, ge=1, le=10_000_000, description="rows (or requests) needed to judge")
    dry_run: StrictBool = Field(False, description="measured, printed and reported; never fails the rollout")
    alpha: float = Field(
        0.002, gt=0, le=0.5, allow_inf_nan=False, description="sequential: the gate's error rate over a rollout"
    )
    tolerance: float | None = Field(
        None, allow_inf_nan=False, description="sequential: a difference this small never fails green"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        """A bare number (or null) is the threshold."""
        return {"threshold": value} if value is None or isinstance(value, (int, float)) else value

    @property
    def live(self) -> bool:
        return self.threshold is not None and not self.dry_run


def _gate(name: str, threshold: float | None, min_rows: int = 1) -> Gate:
    info = GATES[name]
    return Gate(threshold=threshold, min_rows=min_rows, alpha=info.alpha, tolerance=info.tolerance)


class Gates(BaseModel):
    """What green must show, each gate with its threshold, sample and mode."""

    model_config = ConfigDict(extra="forbid")

    max_error_rate: Gate = Field(default_factory=lambda: _gate("max_error_rate", 0.01, 50))
    max_p99_ms: Gate = Field(default_factory=lambda: _gate("max_p99_ms", 500.0, 50))
    max_p99_ratio: Gate = Field(default_factory=lambda: _gate("max_p99_ratio", 3.0, 50))
    max_slower_share: Gate = Field(default_factory=lambda: _gate("max_slower_share", 0.6, 50))
    srm_p_value: Gate = Field(default_factory=lambda: _gate("srm_p_value", 0.001, 100))
    max_class_divergence: Gate = Field(default_factory=lambda: _gate("max_class_divergence", 0.2, 200))
    max_class_shift: Gate = Field(default_factory=lambda: _gate("max_class_shift", 0.15, 200))
    max_confidence_drop: Gate = Field(default_factory=lambda: _gate("max_confidence_drop", 0.1, 200))
    max_accuracy_drop: Gate = Field(default_factory=lambda: _gate("max_accuracy_drop", None, 100))
    min_agreement: Gate = Field(default_factory=lambda: _gate("min_agreement", None, 100))
    max_ks_distance: Gate = Field(default_factory=lambda: _gate("max_ks_distance", 0.25, 200))
    max_mean_shift: Gate = Field(default_factory=lambda: _gate("max_mean_shift", 0.5, 200))
    max_error_increase: Gate = Field(default_factory=lambda: _gate("max_error_increase", None, 100))

    @model_validator(mode="after")
    def _in_range(self) -> Gates:
        problems = []
        for name, info in GATES.items():
            low, high, low_in, high_in = info.bounds
            for field_name in ("threshold", "tolerance"):
                value = getattr(getattr(self, name), field_name)
                if value is None:
                    continue
                if value < low or (value == low and not low_in) or value > high or (value == high and not high_in):
                    span = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
                    problems.append(f"gates.{name}: {field_name} must be within {span}, got {value:g}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def items(self) -> list[tuple[str, Gate]]:
        return [(name, getattr(self, name)) for name in GATES]

    def tolerance(self, name: str) -> float | None:
        """The line a sequential gate fails beyond: its tolerance, never above its threshold."""
        gate = getattr(self, name)
        if gate.threshold is None or gate.tolerance is None:
            return gate.threshold
        return min(gate.tolerance, gate.threshold)


class RolloutSpec(BaseModel):
    """The rollout plan: steps, how a step is judged and how long it lasts, what a failure does, and the gates."""

    model_config = ConfigDict(extra="forbid")

    steps: list[int] = Field([10, 25, 50, 100], min_length=1, description="green weights, rising, ending at 100")
    mode: Literal["sequential", "fixed"] = Field(
        "sequential",
        description="sequential: always-valid tests looked at every check_every, a step ends on evidence; fixed: each "
        "step held hold_seconds, thresholds checked once per window",
    )
    min_step_seconds: float = Field(5.0, ge=0, le=3600, description="sequential: the shortest a step lasts")
    max_step_seconds: float = Field(
        120.0, gt=0, le=7 * 86400, description="sequential: a step without every verdict by then pauses"
    )
    hold_seconds: float = Field(30.0, gt=0, le=3600, description="fixed: how long each window is held before judging")
    max_inconclusive: int = Field(3, ge=1, description="fixed: windows with too little evidence before pausing")
    max_failed_checks: int = Field(
        2, ge=1, description="failed checks (in all) before on_failure; sequential: health checks only"
    )
    on_failure: Literal["rollback", "pause"] = Field(
        "rollback", description="after a failure: rollback (green 0%) or pause (the split stays; exit 2)"
    )
    on_blue_down: Literal["wait", "pause"] = Field(
        "wait", description="blue down mid-rollout: wait for it (judging nothing) up to blue_down_seconds, or pause"
    )
    blue_down_seconds: float = Field(120.0, gt=0, le=3600, description="how long to wait for blue before pausing")
    label_wait_seconds: float = Field(
        600.0, gt=0, le=7 * 86400, description="how long a step waits for labels before on_failure"
    )
    check_every: float = Field(1.0, gt=0, le=60, description="seconds between health checks during a hold")
    shadow_seconds: float = Field(0.0, ge=0, le=3600, description="shadow phase before the first step (0: none)")
    gates: Gates = Field(default_factory=Gates)

    @field_validator("steps")
    @classmethod
    def _rising_to_100(cls, steps: list[int]) -> list[int]:
        if any(not 1 <= s <= 100 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 100:
            raise ValueError(f"steps must rise strictly within 1-100 and end at 100, got {steps}")
        return steps

    @model_validator(mode="after")
    def _step_rails(self) -> RolloutSpec:
        if self.min_step_seconds > self.max_step_seconds:
            raise ValueError(
                f"min_step_seconds ({self.min_step_seconds:g}) is above max_step_seconds ({self.max_step_seconds:g})"
            )
        return self

    def judged(self, name: str, task: str = "classification") -> bool:
        """Whether this spec judges the gate at all for a model of this task (off gates, the other mode's gates and
        the other task's: no)."""
        gate = getattr(self.gates, name)
        if gate.threshold is None or self.mode not in GATES[name].modes or not applies(name, task):
            return False
        return name != "min_agreement" or self.shadow_seconds > 0

    def family_alpha(self, task: str = "classification") -> float:
        """Sequential mode: the chance that any live gate errs in a rollout (rolls back a green within every
        tolerance, or passes one beyond a threshold), at most the sum of their error rates (a union bound)."""
        return sum(gate.alpha for name, gate in self.gates.items() if gate.live and self.judged(name, task))

    def step_alpha(self, name: str) -> float:
        """A gate's error rate at one step: its rollout's share, split evenly over the steps (each step's evidence is
        its own); the shadow phase is judged once."""
        gate = getattr(self.gates, name)
        return gate.alpha if name == "min_agreement" else gate.alpha / len(self.steps)


def load_spec(path: Path | None, overrides: dict | None = None) -> RolloutSpec:
    """The spec file (default: the committed one) with command-line overrides on top; bad values are refused.

    Overrides: any top-level field; a gate's name sets its threshold; `dry_run` (a list of gate names) makes those
    gates dry runs; `min_requests` sets the HTTP gates' sample and `min_rows` the quality gates'. None: not given.
    """
    path = path or DEFAULT_SPEC
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CanaryError(f"cannot read rollout spec {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("gates") or {}, dict):
        raise CanaryError(f"rollout spec {path} must be a mapping of fields, with `gates` a mapping too")
    gates = {name: _as_mapping(value) for name, value in (data.get("gates") or {}).items()}
    for name, value in gates.items():
        if not isinstance(value, dict):
            raise CanaryError(
                f"invalid rollout spec: gates.{name} must be a number, null or a mapping "
                f"{{threshold, min_rows, dry_run, alpha, tolerance}}, got {value!r}"
            )
    for name in [k for k in overrides if k in GATES]:
        gates.setdefault(name, {})["threshold"] = overrides.pop(name)
    for name in overrides.pop("dry_run", []):
        if name not in GATES:
            raise CanaryError(f"unknown gate {name!r} for --dry-run; gates: {', '.join(GATES)}")
        gates.setdefault(name, {})["dry_run"] = True
    for option, kind in (("min_requests", "http"), ("min_rows", "quality"), ("min_labels", "labels")):
        if (rows := overrides.pop(option, None)) is not None:
            for name in [name for name, info in GATES.items() if info.kind == kind]:
                gates.setdefault(name, {})["min_rows"] = rows
    data.update(overrides)
    data["gates"] = {name: _complete(name, value) for name, value in gates.items()}
    try:
        return RolloutSpec(**data)
    except ValidationError as exc:
        raise CanaryError(f"invalid rollout spec: {describe(exc)}") from None


def _as_mapping(value):
    """A gate's value: a bare number (or null) is its threshold; anything else is taken as the mapping it is."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {"threshold": value} if value is None or number else value


def _complete(name: str, given):
    """A gate partly given (say, only dry_run) keeps the defaults of the rest."""
    if not isinstance(given, dict) or name not in Gates.model_fields:
        return given  # refused by validation, naming the gate
    default = getattr(Gates(), name).model_dump()
    return {**default, **given}
