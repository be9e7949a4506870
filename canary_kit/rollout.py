"""Progressive rollout with metric gates: step green's weight up, judge each step, roll back on failure.

Each step sets the weight through the same safe path as `canary set-weight`, holds it, and judges the window
from both backends' Prometheus counters (deltas of /metrics):
- advance: green served enough requests and passed every gate;
- hold: too few green requests to judge (Argo Rollouts' "inconclusive"); after `max_inconclusive` such windows
  the rollout pauses where it is;
- fail: a gate failed, or green stopped answering its health check; after `max_failed_checks` failed checks
  the rollout rolls back (green 0%).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from canary_kit.config import CanaryError, describe
from canary_kit.control import SplitChanged, current, set_weight, snapshots
from canary_kit.metrics import figures_between

DEFAULT_SPEC = Path(__file__).with_name("rollout.yaml")


class Gates(BaseModel):
    """What green must show over a step's window."""

    model_config = ConfigDict(extra="forbid")

    max_error_rate: float = Field(0.01, ge=0, le=1, description="largest share of 5xx answers from green")
    max_p99_ms: float = Field(500.0, gt=0, description="largest p99 latency of green, in ms")
    max_p99_ratio: float = Field(3.0, gt=0, description="largest green p99 / blue p99 over the same window")


class RolloutSpec(BaseModel):
    """The rollout plan: steps, holds, the evidence a step needs, and the gates."""

    model_config = ConfigDict(extra="forbid")

    steps: list[int] = Field([10, 25, 50, 100], min_length=1, description="green weights, rising, ending at 100")
    hold_seconds: float = Field(30.0, gt=0, le=3600, description="how long each step is held before judging")
    min_requests: int = Field(50, ge=1, description="green requests a window needs before it can be judged")
    max_inconclusive: int = Field(3, ge=1, description="windows with too few requests before pausing")
    max_failed_checks: int = Field(2, ge=1, description="failed checks (in all) before rolling back")
    check_every: float = Field(1.0, gt=0, le=60, description="seconds between health checks during a hold")
    shadow_seconds: float = Field(0.0, ge=0, le=3600, description="shadow phase before the first step (0: none)")
    min_agreement: float | None = Field(None, ge=0, le=1, description="shadow agreement required to go live")
    gates: Gates = Field(default_factory=Gates)

    @field_validator("steps")
    @classmethod
    def _rising_to_100(cls, steps: list[int]) -> list[int]:
        if any(not 1 <= s <= 100 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 100:
            raise ValueError(f"steps must rise strictly within 1-100 and end at 100, got {steps}")
        return steps


def load_spec(path: Path | None, overrides: dict) -> RolloutSpec:
    """The spec file (default: the committed one) with command-line overrides on top; bad values are refused."""
    path = path or DEFAULT_SPEC
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CanaryError(f"cannot read rollout spec {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("gates", {}), dict):
        raise CanaryError(f"rollout spec {path} must be a mapping of fields, with `gates` a mapping too")
    gates = {k: overrides.pop(k) for k in list(overrides) if k in Gates.model_fields and overrides[k] is not None}
    data.update({k: v for k, v in overrides.items() if v is not None})
    data["gates"] = {**data.get("gates", {}), **gates}
    try:
        return RolloutSpec(**data)
    except ValidationError as exc:
        raise CanaryError(f"invalid rollout spec: {describe(exc)}") from None


@dataclass
class Check:
    """One judged window."""

    step: int
    weight: int
    verdict: str  # advance | hold | fail
    reason: str
    at: float
    green: dict | None = None
    blue: dict | None = None


@dataclass
class Rollout:
    """The outcome, with every check, for the report."""

    spec: dict
    started: str
    outcome: str = "running"  # promoted | rolled back | paused | stopped (split changed by someone else)
    reason: str = ""
    final_weight: int | None = None
    shadow: dict | None = None
    checks: list[Check] = field(default_factory=list)


def judge(green: dict | None, blue: dict | None, gates: Gates, min_requests: int) -> tuple[str, str]:
    """The verdict for one window's figures."""
    if green is None:
        return "fail", "green's /metrics did not answer"
    if green["errors"] > gates.max_error_rate * max(green["requests"], min_requests):
        # decided even on a quiet window: these errors break the gate whatever the next requests bring
        return "fail", f"green answered {green['errors']} of {green['requests']} requests with 5xx"
    if green["requests"] < min_requests:
        return "hold", f"only {green['requests']} green requests (need {min_requests})"
    if green["error_rate"] > gates.max_error_rate:
        return "fail", f"green error rate {green['error_rate']:.2%} > {gates.max_error_rate:.2%}"
    if green["p99_ms"] is not None and green["p99_ms"] > gates.max_p99_ms:
        return "fail", f"green p99 {green['p99_ms']:.0f} ms > {gates.max_p99_ms:.0f} ms"
    if blue and blue["requests"] and blue["p99_ms"] and green["p99_ms"] is not None:
        ratio = green["p99_ms"] / blue["p99_ms"]
        if ratio > gates.max_p99_ratio:
            return "fail", f"green p99 is {ratio:.1f}x blue's (> {gates.max_p99_ratio:.1f}x)"
    return "advance", f"{green['requests']} green requests, gates passed"


def _line(figures: dict | None) -> str:
    if not figures:
        return "-"
    rate = "-" if figures["error_rate"] is None else f"{figures['error_rate']:.1%}"
    p99 = "-" if figures["p99_ms"] is None else f"{figures['p99_ms']:.0f}ms"
    return f"{figures['requests']} req, {rate} 5xx, p99 {p99}"


def run(target, spec: RolloutSpec, echo: Callable[[str], None], shadow_phase=None) -> Rollout:
    """Walk the steps; return how it ended. Ctrl-C leaves the split where it is (the caller says so)."""
    result = Rollout(spec=spec.model_dump(), started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    t0 = time.monotonic()
    if spec.shadow_seconds:
        result.shadow = shadow_phase(target, spec.shadow_seconds, echo)
        agreement = result.shadow.get("agreement")
        if spec.min_agreement is not None and (agreement is None or agreement < spec.min_agreement):
            set_weight(target, 0, reason="rollout: shadow agreement too low", event="rollout")
            result.outcome, result.final_weight = "rolled back", 0
            result.reason = f"shadow agreement {agreement} below {spec.min_agreement}"
            return result
    failed = 0
    state = current(target)
    result.final_weight = state.green_weight
    for number, weight in enumerate(spec.steps, start=1):
        if weight < state.green_weight and not state.shadow:
            continue  # green already has more than this share: carry on from where it is
        try:  # only from the state the rollout left: any change meanwhile (an operator, a deploy) stops it
            _, state = set_weight(
                target, weight, reason=f"rollout step {number}/{len(spec.steps)}", expect=state.serial, event="rollout"
            )
        except SplitChanged as exc:
            result.outcome, result.reason = "stopped", str(exc)
            result.final_weight = current(target).green_weight
            return result
        result.final_weight = weight
        inconclusive = 0
        while True:
            before, started = snapshots(target), time.monotonic()
            verdict = reason = None
            shown = 0.0
            while (elapsed := time.monotonic() - started) < spec.hold_seconds:
                time.sleep(min(spec.check_every, spec.hold_seconds - elapsed))
                now = current(target)
                if now.serial != state.serial:
                    result.outcome, result.final_weight = "stopped", now.green_weight
                    result.reason = f"the state was changed by someone else (green now {now.green_weight}%)"
                    return result
                if target.backend("green", "/readyz") is None:
                    verdict, reason = "fail", "green is not ready (health check failed)"
                    break
                if time.monotonic() - shown >= 5:
                    shown = time.monotonic()
                    left = spec.hold_seconds - (shown - started)
                    live = figures_between(before["green"], snapshots(target)["green"])
                    echo(f"  step {number}/{len(spec.steps)}  green {weight}%  {left:4.0f}s left  green: {_line(live)}")
            after = snapshots(target)
            green, blue = (figures_between(before[c], after[c]) for c in ("green", "blue"))
            if verdict is None:
                verdict, reason = judge(green, blue, spec.gates, spec.min_requests)
            result.checks.append(Check(number, weight, verdict, reason, round(time.monotonic() - t0, 1), green, blue))
            echo(f"step {number}/{len(spec.steps)} green {weight}%: {verdict.upper()} - {reason}  (blue: {_line(blue)})")
            if verdict == "advance":
                break
            if verdict == "hold":
                inconclusive += 1
                if inconclusive >= spec.max_inconclusive:
                    result.outcome, result.reason = "paused", f"too little traffic at {weight}%: {reason}"
                    return result
                continue
            failed += 1
            if failed >= spec.max_failed_checks:
                set_weight(target, 0, reason=f"rollout: {reason}", event="rollout")
                result.outcome, result.final_weight = "rolled back", 0
                result.reason = f"{failed} failed checks; last: {reason}"
                return result
    result.outcome, result.reason = "promoted", "every step passed"
    return result


def write_report(result: Rollout, folder: Path) -> Path:
    """rollout-<time>.json, .md and .svg (weight and green's error rate over time) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"rollout-{result.started.replace(':', '').replace('+0000', 'Z')}"
    data = asdict(result)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    stem.with_suffix(".svg").write_text(_chart(result.checks))
    rows = [
        f"| {c.at:.0f} | {c.step} | {c.weight}% | {c.verdict} | {_line(c.green)} | {_line(c.blue)} | {c.reason} |"
        for c in result.checks
    ]
    shadow = ""
    if result.shadow:
        shadow = f"\nShadow phase: {json.dumps(result.shadow)}\n"
    stem.with_suffix(".md").write_text(
        f"# Rollout {result.started}: {result.outcome}\n\n{result.reason}; green ends at {result.final_weight}%.\n"
        f"{shadow}\n![weight and green error rate](./{stem.name}.svg)\n\n"
        "| t (s) | step | green weight | verdict | green | blue | reason |\n|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    return stem.with_suffix(".md")


def _chart(checks: list[Check], width: int = 480, height: int = 160) -> str:
    """A small SVG: green's weight (line) and error rate (red dots) at each check."""
    if not checks:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"></svg>\n'
    end = max(c.at for c in checks) or 1.0

    def xy(at: float, share: float) -> str:
        return f"{40 + (width - 50) * at / end:.1f},{height - 20 - (height - 30) * share:.1f}"

    starts = [0.0, *(c.at for c in checks[:-1])]  # each window runs from the previous check to its own
    weight = " ".join(f"{xy(start, c.weight / 100)} {xy(c.at, c.weight / 100)}" for start, c in zip(starts, checks))
    errors = "".join(
        f'<circle cx="{xy(c.at, min(1.0, c.green["error_rate"] or 0)).split(",")[0]}" '
        f'cy="{xy(c.at, min(1.0, c.green["error_rate"] or 0)).split(",")[1]}" r="3" fill="#c0392b"/>'
        for c in checks
        if c.green
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="10"><rect width="100%" height="100%" fill="white"/>'
        f'<line x1="40" y1="{height - 20}" x2="{width - 10}" y2="{height - 20}" stroke="#888"/>'
        f'<line x1="40" y1="10" x2="40" y2="{height - 20}" stroke="#888"/>'
        f'<text x="4" y="14">100%</text><text x="14" y="{height - 20}">0%</text>'
        f'<text x="{width - 60}" y="{height - 6}">{end:.0f} s</text>'
        f'<polyline points="{weight}" fill="none" stroke="#27ae60" stroke-width="2"/>{errors}'
        f'<text x="50" y="14" fill="#27ae60">green weight</text><text x="130" y="14" fill="#c0392b">'
        f"green 5xx rate</text></svg>\n"
    )
