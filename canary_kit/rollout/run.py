"""Progressive rollout with gates on a live stack: step green's weight up, judge each step, roll back or pause.

The step loop is driver.walk, on the wall clock and this module's LivePlant: it sets each step's weight through
the same safe path as `canary set-weight` (only from the state the rollout left), checks both versions' health,
takes pause/abort requests through the state folder (live.py), and measures: deltas of both backends' /metrics
(predicted classes and confidence, when the service exports them), and from nginx's access log, over the split's
traffic only (pinned requests left out of every gate): the split, each version's tries (requests, 5xx, latency),
each answer's request_time by version (the sequential latency gates) and what the answers predicted. The verdict
of each look is a pure function of the spec, the step and those figures (gates.py), tested on recorded windows; the
loop itself is tested on a fake clock and plant, and simulated (bench/rollout_sim.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from canary_kit.core import accesslog, logfiles
from canary_kit.core.endpoints import asks_endpoint
from canary_kit.core.errors import CanaryError
from canary_kit.core.target import Target
from canary_kit.observe.answers import Observed, fill, observed
from canary_kit.observe.ledger import utc
from canary_kit.observe.ledger_queries import errors_since, labelled_since
from canary_kit.observe.metrics import Snapshot, figures_between, http_figures, split_tries, with_split_http
from canary_kit.observe.scrape import snapshots
from canary_kit.policy.evidence import Figures, Window
from canary_kit.policy.gates import judge_shadow
from canary_kit.policy.spec import RolloutSpec
from canary_kit.rollout.driver import Check, RealClock, Rollout, walk
from canary_kit.rollout.live import Channel
from canary_kit.steer.control import current, log_event, set_weight

__all__ = ["Check", "LivePlant", "Rollout", "run"]

Echo = Callable[[str], None]
ShadowPhase = Callable[..., dict]  # shadow.run_shadow: mirror for some seconds (or until decided), then compare


def run(target: Target, spec: RolloutSpec, echo: Echo, shadow_phase: ShadowPhase | None = None) -> Rollout:
    """Walk the steps; return how it ended. A rollout never ends half-way unsaid: any error puts green back to 0%
    (or, when even that fails, ends paused, which `canary status` and the dashboard shout about), with a line in
    the change log saying why. Ctrl-C leaves the split where it is (the caller says so; the change log too).
    Progress is published, and pause/abort requests are taken, through the state folder (live.py); a rollout
    killed with SIGKILL is put back to 0% by `canary up`'s supervisor."""
    result = Rollout(spec=spec.model_dump(), started=datetime.now(UTC).isoformat(timespec="seconds"))
    if spec.mode == "sequential":
        result.family_alpha = spec.family_alpha(target.prediction_metrics.task)
    clock = RealClock()
    t0 = clock.now()
    channel = Channel(target.state_dir, result)
    try:
        if spec.shadow_seconds and not _shadow_passes(target, spec, echo, shadow_phase, result):
            return result
        since = utc(result.started) or result.started  # labels count for every answer of this rollout, any step
        return walk(spec, LivePlant(target, spec, channel, since), clock, echo, result, started=t0)
    except KeyboardInterrupt:
        weight = _weight(target)
        _note(target, "rollout", f"rollout interrupted (Ctrl-C or a stop signal): green stays at {weight}%")
        raise
    except Exception as exc:
        return _unwind(target, result, exc, echo, channel)
    finally:
        try:
            channel.where["serial"] = current(target).serial  # the state it left: status shouts while it stands
        except Exception:
            pass
        channel.publish(state=None if result.outcome != "running" else "interrupted")


def _unwind(target: Target, result: Rollout, exc: Exception, echo: Echo, channel: Channel) -> Rollout:
    """An error ended the walk: green back to 0%; paused (and said so) when even that cannot be done."""
    why = str(exc) if isinstance(exc, CanaryError) else f"{type(exc).__name__}: {exc}"
    weight = _weight(target)
    channel.where["error"] = why
    try:
        set_weight(target, 0, reason=f"rollout stopped by an error at green {weight}%: {why}", event="rollout")
        again = None
    except Exception as failed:
        again = str(failed) if isinstance(failed, CanaryError) else f"{type(failed).__name__}: {failed}"
    now = _weight(target)
    if now == 0:  # also when nginx did not confirm the rollback: the file holds it
        result.outcome, result.final_weight = "rolled back", 0
        result.reason = f"error at green {weight}%: {why}; green back to 0%"
    else:
        result.outcome, result.final_weight = "paused", now
        result.reason = f"error at green {now}%: {why}; green could not be put back to 0% ({again}): `canary rollback`"
        _note(target, "rollout", f"rollout stopped by an error, PAUSED at green {now}%: {why} (no rollback: {again})")
    echo(f"rollout: {result.reason}")
    return result


def _weight(target: Target) -> int:
    try:
        return current(target).green_weight
    except Exception:
        return -1


def _note(target: Target, event: str, reason: str) -> None:
    """A line in the change log for an end the walk could not log itself (best effort: the disk may be full)."""
    try:
        state = current(target)
        log_event(target.state_dir, target.name, event, state, state, reason)
    except Exception:
        pass


@dataclass
class Span:
    """The start of a span of evidence on a live stack: both backends' /metrics then, and nginx's log read from
    there on (what it has given so far: the unpinned split, request times and what the answers predicted, by
    color)."""

    before: dict[str, Snapshot | None]
    tail: LogTail
    split: Counter = field(default_factory=Counter)
    tries: dict[str, list] = field(default_factory=lambda: {"green": [], "blue": []})  # metrics.split_tries
    latency: dict[str, Counter] = field(default_factory=lambda: {"green": Counter(), "blue": Counter()})
    seen: dict[str, Observed] = field(default_factory=lambda: {"green": Observed(), "blue": Observed()})


class LogTail:
    """nginx's access log from one moment on, read a piece at a time: from the file where the stack writes one (by
    the file's identity and a byte offset, whole lines only: a rotation or a truncation in place meanwhile is
    followed, logfiles.py); otherwise everything since the mark again at each read, keeping only what is new
    (compose: the log by time)."""

    def __init__(self, target: Target) -> None:
        self.target, self.mark = target, target.log_mark()
        self.joiner = accesslog.Joiner()
        self.file, self.inode, self.offset, self.seen = self.mark.file, self.mark.inode, self.mark.offset, 0
        if not (self.file or self.inode) and target.access_log is not None:  # a mark that names no file: the log's
            self.file, self.inode = logfiles.identity(target.access_log) or "", _inode(target.access_log)

    def read(self) -> list[dict]:
        log = self.target.access_log
        if log is None:
            entries = self.target.log_since(self.mark)
            new, self.seen = entries[self.seen :], len(entries)
            return new
        files = logfiles.family(log)
        marked = [at for at, path in enumerate(files) if self._is_mine(path)]
        parts = [(files[marked[-1]], self.offset), *((p, 0) for p in files[marked[-1] + 1 :])] if marked else []
        entries = []
        for path, offset in parts or [(log, 0)]:  # the file it read is gone: the log from its start
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # a line nginx is still writing is read next time
            self.file, self.inode, self.offset = logfiles.identity(path) or "", _inode(path), offset + end
            for line in data[:end].decode(errors="replace").split("\n"):
                entry = self.joiner.feed(line)  # kept from read to read: an entry may follow its predictions later
                if entry is not None:
                    entries.append(entry)
        return entries

    def _is_mine(self, path) -> bool:
        """Whether `path` is the file read so far: by its identity, or its inode while it had no whole line."""
        return logfiles.identity(path) == self.file if self.file else _inode(path) == self.inode


def _inode(path) -> int:
    try:
        return path.stat().st_ino
    except OSError:
        return 0


class LivePlant:
    """driver.Plant on a live stack."""

    def __init__(self, target: Target, spec: RolloutSpec, channel: Channel, since: str) -> None:
        self.target, self.spec, self.channel, self.since = target, spec, channel, since
        self.state = current(target)

    def weight(self) -> tuple[int, bool]:
        state = current(self.target)
        return state.green_weight, state.shadow

    def set_weight(self, weight: int, reason: str) -> None:
        _, self.state = set_weight(self.target, weight, reason=reason, expect=self.state.serial, event="rollout")

    def roll_back(self, reason: str) -> None:
        set_weight(self.target, 0, reason=reason, event="rollout")

    def changed(self) -> bool:
        return current(self.target).serial != self.state.serial

    def interrupt(self) -> None:
        self.channel.check()  # raises live.Interrupted

    def ready(self) -> tuple[bool, bool]:
        # as control.takeover reads "blue is down"
        return self.target.serving("green") is not None, self.target.serving("blue") is not None

    def mark(self) -> Span:
        return Span(snapshots(self.target), LogTail(self.target))

    def glance(self, mark: Span) -> Figures | None:
        return figures_between(mark.before["green"], snapshots(self.target)["green"])

    def window(self, mark: Span, ready: tuple[bool, bool], blue_reference: Figures | None) -> Window:
        after = snapshots(self.target)
        model = self.target.prediction_metrics
        versions = {"blue": self.state.blue_version, "green": self.state.green_version}
        color = {v: c for c, v in versions.items() if v}
        entries = mark.tail.read()
        for routed, tries in split_tries(entries, model.endpoints).items():
            mark.tries[routed] += tries
        for entry in entries:
            if entry.get("shadow") or entry.get("pin") or not asks_endpoint(entry, model.endpoints):
                continue
            name = color.get(str(entry.get("version")))
            if name is None:  # an answer from neither version, such as a shed 503
                continue
            mark.split[name] += 1
            if entry.get("status") == 200 and isinstance(entry.get("request_time"), (int, float)):
                mark.latency[name][int(round(entry["request_time"] * 1000))] += 1
        if model.observed:  # what the answers predicted, read by nginx as they passed
            for name, more in observed(entries, versions, model.endpoints, model.task, pinned=False).items():
                _add(mark.seen[name], more)
        figures: dict[str, Figures | None] = {}
        for name in ("green", "blue"):
            found = with_split_http(figures_between(mark.before[name], after[name]), http_figures(mark.tries[name]))
            found = fill(found, mark.seen[name], model) if model.observed else found
            if found is not None and mark.latency[name]:
                found = replace(found, latency_ms=dict(mark.latency[name]))
            figures[name] = found
        split = {"blue": mark.split["blue"], "green": mark.split["green"]}
        regression = model.task == "regression"
        labels = errors = None
        if not regression and self.spec.gates["max_accuracy_drop"].threshold is not None:
            labels = labelled_since(self.target, versions, self.since)
        if regression and self.spec.gates["max_error_increase"].live:
            errors = errors_since(self.target, versions, self.since)
        green, blue = figures["green"], figures["blue"]
        return Window(green, blue, split, ready[0], ready[1], blue_reference, labels, model.task, errors)

    def publish(self, **where) -> None:
        self.channel.publish(**where)


def _add(total: Observed, more: Observed) -> None:
    """What a later piece of the log's answers predicted, added to what the span has seen."""
    total.answers += more.answers
    total.unobserved += more.unobserved
    for name, rows in more.class_rows.items():
        total.class_rows[name] = total.class_rows.get(name, 0) + rows
    total.values.extend(more.values)
    total.confidences.extend(more.confidences)


def _shadow_passes(
    target: Target, spec: RolloutSpec, echo: Echo, shadow_phase: ShadowPhase | None, result: Rollout
) -> bool:
    """The shadow phase and its agreement gate; False (and the outcome set) when green must not go live. In
    sequential mode the phase ends as soon as the agreement gate has a verdict."""
    if shadow_phase is None:
        raise ValueError("the spec asks for a shadow phase, and none was given")
    decided = None
    if spec.mode == "sequential" and spec.gates["min_agreement"].threshold is not None:

        def decided(report: dict) -> bool:
            return judge_shadow(spec, report).status in ("pass", "fail")

    result.shadow = shadow_phase(target, spec.shadow_seconds, echo, decided=decided)
    gate = judge_shadow(spec, result.shadow)
    result.shadow["gate"] = gate.as_dict()
    echo(f"shadow: {gate.mark.upper()} - {gate.detail}; flips (blue -> green): {result.shadow.get('flips') or 'none'}")
    if gate.dry_run or gate.status in ("pass", "skipped"):
        return True
    if spec.on_failure == "pause" or gate.status == "inconclusive":
        result.outcome, result.final_weight = "paused", current(target).green_weight
        result.reason = f"not live: {gate.detail}"
        return False
    set_weight(target, 0, reason=f"rollout: {gate.detail}", event="rollout")
    result.outcome, result.final_weight, result.reason = "rolled back", 0, f"not live: {gate.detail}"
    return False
