"""The rollout plan (`canary_kit/rollout.yaml`, or a copy given with --spec): steps, holds, the evidence a window
needs, what a failure does, and the gates. One typed object; a bad value is refused before anything changes."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from canary_kit.core.errors import CanaryError, describe
from canary_kit.policy import registry
from canary_kit.policy.registry import GATES, applies

__all__ = ["GATES", "Gate", "Gates", "RolloutSpec", "applies", "default_gate", "load_spec"]

DEFAULT_SPEC = Path(__file__).parents[1] / "rollout.yaml"  # canary_kit/rollout.yaml


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


def default_gate(name: str) -> Gate:
    """A gate as its declaration sets it (registry.py)."""
    info = GATES[name]
    return Gate(threshold=info.threshold, min_rows=info.min_rows, alpha=info.alpha, tolerance=info.tolerance)


class Gates(BaseModel):
    """What green must show, each gate with its threshold, sample and mode: one field per declared gate (the model
    is built from the registry, and built again when a gate is declared); read one with gates[name]."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _in_range(self) -> Gates:
        problems = []
        for name in type(self).model_fields:
            bounds = GATES[name].bounds
            for field_name in ("threshold", "tolerance"):
                value = getattr(self[name], field_name)
                if value is not None and not bounds.holds(value):
                    problems.append(f"gates.{name}: {field_name} must be within {bounds}, got {value:g}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def __getitem__(self, name: str) -> Gate:
        gate = getattr(self, name)
        assert isinstance(gate, Gate)
        return gate

    def items(self) -> list[tuple[str, Gate]]:
        return [(name, self[name]) for name in type(self).model_fields]

    def tolerance(self, name: str) -> float | None:
        """The line a sequential gate fails beyond: its tolerance, never above its threshold."""
        gate = self[name]
        if gate.threshold is None or gate.tolerance is None:
            return gate.threshold
        return min(gate.tolerance, gate.threshold)


def _gates_model() -> type[Gates]:
    fields: dict = {name: (Gate, Field(default_factory=partial(default_gate, name))) for name in GATES}
    doc = "What green must show, each gate with its threshold, sample and mode."  # the JSON schema's description
    return create_model("Gates", __base__=Gates, __module__=__name__, __doc__=doc, **fields)


_model: type[Gates] = _gates_model()


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
    gates: Gates = Field(default_factory=lambda: _model())

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
        info = GATES[name]
        if self.gates[name].threshold is None or self.mode not in info.modes or not applies(name, task):
            return False
        return info.kind != "shadow" or self.shadow_seconds > 0

    def family_alpha(self, task: str = "classification") -> float:
        """Sequential mode: the chance that any live gate errs in a rollout (rolls back a green within every
        tolerance, or passes one beyond a threshold), at most the sum of their error rates (a union bound)."""
        return sum(gate.alpha for name, gate in self.gates.items() if gate.live and self.judged(name, task))

    def step_alpha(self, name: str) -> float:
        """A gate's error rate at one step: its rollout's share, split evenly over the steps (each step's evidence is
        its own); the shadow phase is judged once."""
        gate = self.gates[name]
        return gate.alpha if GATES[name].kind == "shadow" else gate.alpha / len(self.steps)


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
            for name in registry.of_kind(kind):
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
    if not isinstance(given, dict) or name not in GATES:
        return given  # refused by validation, naming the gate
    return {**default_gate(name).model_dump(), **given}


def _rebuild() -> None:
    """A gate declared or withdrawn: the spec's model of the gates again, with one field per gate."""
    global _model
    _model = _gates_model()
    RolloutSpec.model_fields["gates"].annotation = _model
    RolloutSpec.model_rebuild(force=True)


_rebuild()  # RolloutSpec's field holds the built model, not the base class
registry.on_change(_rebuild)
