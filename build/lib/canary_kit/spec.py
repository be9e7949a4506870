"""The rollout plan (`canary_kit/rollout.yaml`, or a copy given with --spec): steps, holds, the evidence a window
needs, what a failure does, and the gates. One typed object; a bad value is refused before anything changes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from canary_kit.config import CanaryError, describe

DEFAULT_SPEC = Path(__file__).with_name("rollout.yaml")

# Each gate: (what it measures, the range of its threshold as (low, high, low included, high included), its kind).
# Its sample (min_rows): green's requests for the HTTP gates; the unpinned /predict requests for srm; the rows each
# version predicted for the quality gates; labelled rows per version for max_accuracy_drop and max_error_increase;
# the rows compared in the shadow phase for min_agreement. A model gate judges one task (TASK_OF); the other
# task's gates are left out of its rollouts.
GATES: dict[str, tuple[str, tuple[float, float, bool, bool], str]] = {
    "max_error_rate": ("green's share of 5xx answers", (0, 1, True, True), "http"),
    "max_p99_ms": ("green's p99 latency, in ms", (0, 3_600_000, False, True), "http"),
    "max_p99_ratio": ("green's p99 over blue's", (0, 1000, False, True), "http"),
    "srm_p_value": (
        "sample-ratio mismatch: the chi-square p-value below which the split is not the one set",
        (0, 1, False, False),
        "srm",
    ),
    "max_class_divergence": (
        "Jensen-Shannon distance between green's and blue's predicted-class shares",
        (0, 1, True, True),
        "quality",
    ),
    "max_confidence_drop": ("blue's mean top-class probability minus green's", (0, 1, True, True), "quality"),
    "max_accuracy_drop": (
        "labels sent back: blue's accuracy minus green's, with 95% confidence, on the answers of "
        "this rollout (min_rows: labelled rows per version)",
        (0, 1, True, True),
        "labels",
    ),
    "min_agreement": (
        "shadow phase: the 95% Wilson lower bound of the rows on which both versions agree",
        (0, 1, True, True),
        "shadow",
    ),
    "max_ks_distance": (
        "Kolmogorov-Smirnov distance between green's and blue's predicted values",
        (0, 1, True, True),
        "quality",
    ),
    "max_mean_shift": (
        "green's mean prediction minus blue's, in blue's standard deviations, with 95% confidence",
        (0, 100, False, True),
        "quality",
    ),
    "max_error_increase": (
        "labels sent back: green's mean absolute error over blue's, minus 1, with 95% confidence, on the answers of "
        "this rollout (min_rows: labelled rows per version)",
        (0, 100, False, True),
        "labels",
    ),
}
CLASSIFIER_GATES = ("max_class_divergence", "max_confidence_drop", "max_accuracy_drop", "min_agreement")
REGRESSOR_GATES = ("max_ks_distance", "max_mean_shift", "max_error_increase")


def applies(name: str, task: str) -> bool:
    """Whether a gate judges a model of this task (the HTTP and split gates judge every model)."""
    if name in CLASSIFIER_GATES:
        return task == "classification"
    return task == "regression" if name in REGRESSOR_GATES else True


class Gate(BaseModel):
    """One gate: its threshold (None: off), the sample below which it is inconclusive, and whether it only reports."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(None, allow_inf_nan=False, strict=True)  # strict: `true` is no threshold
    min_rows: int = Field(1, ge=1, le=10_000_000, description="rows (or requests) needed to judge")
    dry_run: StrictBool = Field(False, description="measured, printed and reported; never fails the rollout")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        """A bare number (or null) is the threshold."""
        return {"threshold": value} if value is None or isinstance(value, (int, float)) else value

    @property
    def live(self) -> bool:
        return self.threshold is not None and not self.dry_run


def _gate(threshold: float | None, min_rows: int = 1) -> Gate:
    return Gate(threshold=threshold, min_rows=min_rows)


class Gates(BaseModel):
    """What green must show over each window, each gate with its threshold, sample and mode."""

    model_config = ConfigDict(extra="forbid")

    max_error_rate: Gate = Field(default_factory=lambda: _gate(0.01, 50))
    max_p99_ms: Gate = Field(default_factory=lambda: _gate(500.0, 50))
    max_p99_ratio: Gate = Field(default_factory=lambda: _gate(3.0, 50))
    srm_p_value: Gate = Field(default_factory=lambda: _gate(0.001, 100))
    max_class_divergence: Gate = Field(default_factory=lambda: _gate(0.2, 200))
    max_confidence_drop: Gate = Field(default_factory=lambda: _gate(0.1, 200))
    max_accuracy_drop: Gate = Field(default_factory=lambda: _gate(None, 100))
    min_agreement: Gate = Field(default_factory=lambda: _gate(None, 100))
    max_ks_distance: Gate = Field(default_factory=lambda: _gate(0.25, 200))
    max_mean_shift: Gate = Field(default_factory=lambda: _gate(0.5, 200))
    max_error_increase: Gate = Field(default_factory=lambda: _gate(None, 100))

    @model_validator(mode="after")
    def _in_range(self) -> Gates:
        problems = []
        for name, (_, (low, high, low_in, high_in), _) in GATES.items():
            value = getattr(self, name).threshold
            if value is None:
                continue
            if value < low or (value == low and not low_in) or value > high or (value == high and not high_in):
                span = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
                problems.append(f"gates.{name}: threshold must be within {span}, got {value:g}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def items(self) -> list[tuple[str, Gate]]:
        return [(name, getattr(self, name)) for name in GATES]


class RolloutSpec(BaseModel):
    """The rollout plan: steps, holds, the evidence a step needs, what a failure does, and the gates."""

    model_config = ConfigDict(extra="forbid")

    steps: list[int] = Field([10, 25, 50, 100], min_length=1, description="green weights, rising, ending at 100")
    hold_seconds: float = Field(30.0, gt=0, le=3600, description="how long each step is held before judging")
    max_inconclusive: int = Field(3, ge=1, description="windows with too little evidence before pausing")
    max_failed_checks: int = Field(2, ge=1, description="failed checks (in all) before on_failure")
    on_failure: Literal["rollback", "pause"] = Field(
        "rollback", description="after max_failed_checks: rollback (green 0%) or pause (the split stays; exit 2)"
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
                f"{{threshold, min_rows, dry_run}}, got {value!r}"
            )
    for name in [k for k in overrides if k in GATES]:
        gates.setdefault(name, {})["threshold"] = overrides.pop(name)
    for name in overrides.pop("dry_run", []):
        if name not in GATES:
            raise CanaryError(f"unknown gate {name!r} for --dry-run; gates: {', '.join(GATES)}")
        gates.setdefault(name, {})["dry_run"] = True
    for option, kind in (("min_requests", "http"), ("min_rows", "quality"), ("min_labels", "labels")):
        if (rows := overrides.pop(option, None)) is not None:
            for name in [name for name, (_, _, of) in GATES.items() if of == kind]:
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
