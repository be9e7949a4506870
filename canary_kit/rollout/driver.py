"""The rollout's step loop, on an injected clock and plant: set each step's weight, look at the evidence, ask
gates.decide, act. The live rollout (run.py: real time, a real stack) and the simulator (bench/rollout_sim.py:
a simulated clock and traffic) run this same loop.

A step's looks: in fixed mode one window of hold_seconds (health checked every check_every, cut short when a version
stops answering), judged once; in sequential mode one look every check_every at everything since the step began,
until every gate has a verdict. Between looks the driver stops at once when someone else changed the split
(SplitChanged), or a pause or abort was asked from outside (Interrupted), and it tracks how long blue has been down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from canary_kit.observe.views import figures_line
from canary_kit.policy.evidence import Decision, Figures, Step, Window, merge
from canary_kit.policy.gates import decide
from canary_kit.policy.spec import RolloutSpec
from canary_kit.rollout.live import Interrupted
from canary_kit.steer.control import SplitChanged

Echo = Callable[[str], None]
RECORD_EVERY = 5.0  # sequential: seconds between the looks kept in the report while a step gathers evidence


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class RealClock:
    """Wall time, monotonic."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class Plant(Protocol):
    """What the loop steers and measures: a live stack (rollout.LivePlant) or a simulated one."""

    def weight(self) -> tuple[int, bool]:
        """Green's weight now, and whether the split is in shadow mode."""
        ...

    def set_weight(self, weight: int, reason: str) -> None:
        """Set green's weight, only from the state the rollout left (raises SplitChanged otherwise)."""
        ...

    def roll_back(self, reason: str) -> None:
        """Green to 0%, whatever the state."""
        ...

    def changed(self) -> bool:
        """Whether someone else changed the state since the rollout last set it."""
        ...

    def interrupt(self) -> None:
        """Raise Interrupted when a pause or abort was asked from outside."""
        ...

    def ready(self) -> tuple[bool, bool]:
        """Whether green and blue answer their health checks."""
        ...

    def mark(self) -> Any:
        """The start of a span of evidence."""
        ...

    def window(self, mark: Any, ready: tuple[bool, bool], blue_reference: Figures | None) -> Window:
        """Both versions' figures since `mark`."""
        ...

    def glance(self, mark: Any) -> Figures | None:
        """Green's figures since `mark`, for a progress line (None: not worth reading)."""
        ...

    def publish(self, **where) -> None:
        """Say where the rollout is (the dashboard reads it)."""
        ...


@dataclass
class Check:
    """One judged look: the verdict, how the look itself came out, why, each gate, and the figures (without their
    per-answer parts)."""

    step: int
    weight: int
    verdict: str  # advance | hold | fail | pause
    reason: str
    at: float
    green: Figures | None = None
    blue: Figures | None = None
    outcome: str = ""  # pass | fail | inconclusive | blue-down | awaiting-labels | gathering
    gates: list[dict] = field(default_factory=list)
    split: dict | None = None
    seconds: float = 0.0  # how long the step had been held at this look

    def to_json(self) -> dict:
        """Its form in a report and current.json."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for color in ("green", "blue"):
            figures = data[color]
            data[color] = None if figures is None else figures.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict) -> Check:
        """A check back from its JSON form (keys it does not have, such as current.json's `wall`, are left out)."""
        kept = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for color in ("green", "blue"):
            if kept.get(color) is not None:
                kept[color] = Figures.from_json(kept[color])
        return cls(**kept)


@dataclass
class Rollout:
    """The outcome, with every check kept, for the report."""

    spec: dict
    started: str
    outcome: str = "running"  # promoted | rolled back | paused | stopped (split changed by someone else)
    reason: str = ""
    final_weight: int | None = None
    shadow: dict | None = None
    checks: list[Check] = field(default_factory=list)
    family_alpha: float | None = None  # sequential: the most the live gates err, together, in this rollout

    def to_json(self) -> dict:
        """Its form in a report: every check with it."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["checks"] = [c.to_json() for c in self.checks]
        return data


WORD = {
    "pass": "ADVANCE",
    "inconclusive": "HOLD",
    "fail": "FAIL",
    "blue-down": "BLUE DOWN",
    "awaiting-labels": "HOLD (labels)",
    "gathering": "LOOK",
}


@dataclass
class _StepState:
    """What the loop counts within a step."""

    started: float
    passed: frozenset[str] = frozenset()
    inconclusive: int = 0
    blue_down_since: float | None = None
    blue_down_total: float = 0.0
    recorded: float = -RECORD_EVERY


def walk(
    spec: RolloutSpec, plant: Plant, clock: Clock, echo: Echo, result: Rollout, started: float | None = None
) -> Rollout:
    """Walk the steps from green's weight now; return how it ended (result, filled in). Checks are timed from
    `started` (the clock's reading when the rollout began, before any shadow phase; default: now)."""
    t0 = clock.now() if started is None else started
    failed = 0
    weight, shadow = plant.weight()
    result.final_weight = weight
    blue_reference: Figures | None = None
    for number, target in enumerate(spec.steps, start=1):
        if target < weight and not shadow:
            continue  # green already has more than this share: carry on from where it is
        try:  # a pause or abort asked since the last look stops the rollout before green gets more
            plant.interrupt()
        except Interrupted as asked:
            return _interrupted(plant, result, asked, weight, echo)
        try:  # only from the state the rollout left: any change meanwhile (an operator, a deploy) stops it
            plant.set_weight(target, f"rollout step {number}/{len(spec.steps)}")
        except SplitChanged as exc:
            result.outcome, result.reason = "stopped", str(exc)
            result.final_weight = plant.weight()[0]
            return result
        weight, shadow, result.final_weight = target, False, target
        state = _StepState(started=clock.now())
        step_mark = plant.mark() if spec.mode == "sequential" else None
        plant.publish(step=number, weight=weight, window_started=time.time(), step_started=time.time())
        while True:
            try:
                window = _look(spec, plant, clock, echo, number, weight, step_mark, blue_reference)
            except Interrupted as asked:
                return _interrupted(plant, result, asked, weight, echo)
            if window is None:
                now = plant.weight()[0]
                result.outcome, result.final_weight = "stopped", now
                result.reason = f"the state was changed by someone else (green now {now}%)"
                return result
            was_down = state.blue_down_since is not None
            went_down, down_for, held = _blue_clock(state, window, clock.now())
            if spec.mode == "sequential" and was_down and window.blue_ready:
                # blue is back: while it was down green answered its share too (nginx fails over), so the step's
                # evidence starts again from here, with every gate to be shown again
                step_mark, state.passed = plant.mark(), frozenset()
                echo(f"step {number}/{len(spec.steps)} green {weight}%: blue is back; the step's evidence starts again")
                continue
            step = Step(number, weight, failed, state.inconclusive, down_for, held, state.passed)
            decision = decide(spec, step, window)
            if _keep(spec, decision, went_down, held, state):
                _record(result, decision, number, weight, window, clock.now() - t0, held, echo, len(spec.steps))
                plant.publish()
            if spec.mode == "sequential":
                plant.publish(look=_look_summary(decision, held))
            failed += decision.outcome == "fail"
            state.inconclusive += decision.outcome == "inconclusive"
            state.passed |= {g.name for g in decision.gates if g.status == "pass"}
            if spec.mode == "fixed" and window.blue and (window.blue.rows or 0) >= _reference_rows(spec):
                blue_reference = window.blue
            if decision.verdict == "advance":
                if spec.mode == "sequential" and weight < 100:
                    blue_reference = merge(blue_reference, _bare(window.blue))
                break
            if decision.verdict == "hold":
                continue
            if decision.verdict == "pause":
                result.outcome, result.reason = "paused", f"at {weight}%: {decision.reason}"
                return result
            plant.roll_back(f"rollout: {decision.reason}")
            result.outcome, result.final_weight = "rolled back", 0
            result.reason = (
                f"{failed} failed checks; last: {decision.reason}"
                if decision.outcome == "fail" and spec.mode == "fixed"
                else decision.reason
            )
            return result
    result.outcome, result.reason = "promoted", "every step passed"
    return result


def _look(
    spec: RolloutSpec,
    plant: Plant,
    clock: Clock,
    echo: Echo,
    number: int,
    weight: int,
    step_mark: Any,
    blue_reference: Figures | None,
) -> Window | None:
    """One look's evidence; None if someone else changed the state meanwhile. Fixed: hold one window (cut short
    when a version stops answering its health check). Sequential: wait check_every, then everything since the
    step began."""
    if spec.mode == "sequential":
        clock.sleep(spec.check_every)
        if plant.changed():
            return None
        plant.interrupt()
        return plant.window(step_mark, plant.ready(), blue_reference)
    mark, started = plant.mark(), clock.now()
    plant.publish(window_started=time.time())
    ready, shown = (True, True), started
    while (elapsed := clock.now() - started) < spec.hold_seconds:
        clock.sleep(min(spec.check_every, spec.hold_seconds - elapsed))
        if plant.changed():
            return None
        plant.interrupt()  # raises Interrupted on a pause or abort asked from outside
        ready = plant.ready()
        if not all(ready):
            break
        if clock.now() - shown >= 5:
            shown = clock.now()
            live = plant.glance(mark)
            if live is not None:
                left = max(0.0, spec.hold_seconds - (shown - started))
                where = f"  step {number}/{len(spec.steps)}  green {weight}%  {left:4.0f}s left"
                echo(f"{where}  green: {figures_line(live)}")
    return plant.window(mark, ready, blue_reference)


def _blue_clock(state: _StepState, window: Window, now: float) -> tuple[bool, float, float]:
    """Whether blue just went down, how long it has been down, and how long the step has been held with blue up
    (the wait for labels and the step's min/max time count only that)."""
    went_down = not window.blue_ready and state.blue_down_since is None
    if window.blue_ready:
        if state.blue_down_since is not None:
            state.blue_down_total += now - state.blue_down_since
        state.blue_down_since = None
    elif went_down:
        state.blue_down_since = now
    down_for = 0.0 if state.blue_down_since is None else now - state.blue_down_since
    return went_down, down_for, now - state.started - state.blue_down_total - down_for


def _keep(spec: RolloutSpec, decision: Decision, went_down: bool, held: float, state: _StepState) -> bool:
    """Whether a look goes into the report: fixed, every window (blue down: only its first); sequential, every
    verdict and, while a step gathers evidence, one look every RECORD_EVERY seconds."""
    if decision.outcome == "blue-down" and decision.verdict == "hold":
        return went_down
    if spec.mode == "fixed" or decision.verdict != "hold":
        return True
    if held - state.recorded >= RECORD_EVERY:
        state.recorded = held
        return True
    return False


def _reference_rows(spec: RolloutSpec) -> int:
    return spec.gates["max_class_divergence"].min_rows


def _bare(figures: Figures | None) -> Figures | None:
    """Figures without their per-answer parts: blue's reference at 100% (its error rate) has no latency; the report
    keeps neither latencies nor a regressor's predicted values themselves."""
    return None if figures is None else figures.bare()


def _look_summary(decision: Decision, held: float) -> dict:
    return {
        "seconds": round(held, 1),
        "verdict": decision.verdict,
        "reason": decision.reason,
        "gates": [g.as_dict() for g in decision.gates],
        "wall": time.time(),
    }


def _interrupted(plant: Plant, result: Rollout, asked: Interrupted, weight: int, echo: Echo) -> Rollout:
    """A pause (the split stays) or an abort (green back to 0%) asked from outside, e.g. from `canary dashboard`."""
    why = f"{asked.action} asked from outside by {asked.by or 'someone'}" + (
        f" ({asked.reason})" if asked.reason else ""
    )
    echo(f"rollout: {why}")
    if asked.action == "abort":
        plant.roll_back(f"rollout aborted: {why}")
        result.outcome, result.final_weight, result.reason = "rolled back", 0, f"aborted at {weight}%: {why}"
    else:
        result.outcome, result.final_weight, result.reason = "paused", weight, f"at {weight}%: {why}"
    return result


def _record(
    result: Rollout,
    decision: Decision,
    number: int,
    weight: int,
    window: Window,
    at: float,
    held: float,
    echo: Echo,
    steps: int,
) -> None:
    result.checks.append(
        Check(
            number,
            weight,
            decision.verdict,
            decision.reason,
            round(at, 1),
            _bare(window.green),
            _bare(window.blue),
            decision.outcome,
            [g.as_dict() for g in decision.gates],
            window.split,
            round(held, 1),
        )
    )
    echo(
        f"step {number}/{steps} green {weight}%: {WORD[decision.outcome]} - {decision.reason}  "
        f"(blue: {figures_line(window.blue)})"
    )
    for gate in decision.gates:
        if gate.dry_run and gate.status == "fail":
            echo(f"  dry-run gate {gate.name} failed (not acted on): {gate.detail}")
