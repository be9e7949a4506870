"""Steer a running canary: read the state nginx applies, change it safely, and read each version's figures.

A change replaces the canary state that nginx reads per request (routing.py), under a lock and only from the
state the caller expects, waits until nginx reports the new state, then appends it to the change log (what
`canary history` shows) and takes a metrics baseline (what `canary status` counts from). nginx is never
reloaded, so no client connection is closed by a change. Works on either target (targets.py).
"""

from __future__ import annotations

import fcntl
import getpass
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx

from canary_kit.core import routing
from canary_kit.core.config import COLORS, environment
from canary_kit.core.endpoints import PredictionMetrics
from canary_kit.core.errors import CanaryError
from canary_kit.core.files import append_line, take_back
from canary_kit.core.routing import CHANGELOG, RoutingState
from canary_kit.core.target import Target
from canary_kit.observe.ledger_status import accuracy_by_version, observed_since, pinned_since
from canary_kit.observe.metrics import Snapshot, figures_between
from canary_kit.observe.scrape import read_baseline, snapshots, write_baseline
from canary_kit.policy.evidence import Figures
from canary_kit.policy.stats import js_distance, ks_distance

APPLY_TIMEOUT = 5.0


class SplitChanged(CanaryError):
    """The state is not what the caller expected: someone else changed it."""


def applied(target: Target, timeout: float = 1.0) -> dict | None:
    """The routing state nginx applies, asked on its admin server on a fresh connection; None when it does not
    answer."""
    try:
        with httpx.Client(transport=target.admin_transport(), timeout=timeout, trust_env=False) as client:
            response = client.get(f"{target.admin_url}/_nginx/split", headers={"Connection": "close"})
    except httpx.HTTPError:
        return None
    return routing.applied_from(response.text) if response.status_code == 200 else None


def current(target: Target) -> RoutingState:
    """The state in the file; a missing or invalid file counts as what nginx then applies (all to blue)."""
    return routing.current(target.state_file)


def split_of(target: Target) -> tuple[int, bool]:
    """(green's weight, shadow on) as the state says."""
    return current(target).split


def require_green(state: RoutingState) -> None:
    """Refuse to send green anything while it serves no version (after `canary finalize`)."""
    if state.green_free:
        raise CanaryError("green serves no version: `canary deploy VERSION` first")


@contextmanager
def change_lock(folder: Path, name: str = ".routing.lock"):
    """One change at a time per state: concurrent `canary` commands wait for each other."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def wait_applied(target: Target, serial: int, timeout: float = APPLY_TIMEOUT) -> None:
    """Until nginx reports the state numbered `serial` (it reads the file per request, so this is at once)."""
    deadline = time.monotonic() + timeout
    while True:
        report = applied(target)
        if report is not None and report.get("serial") == serial and "problem" not in report:
            return
        if time.monotonic() > deadline:
            seen = "no answer" if report is None else report.get("problem") or f"state {report.get('serial')}"
            raise CanaryError(f"nginx did not apply routing state {serial} within {timeout:.0f}s ({seen})")
        time.sleep(0.02)


def commit(target: Target, before: RoutingState, event: str, reason: str = "", **changes) -> RoutingState:
    """With the change lock held: record the change in the change log, then write the state `changes` make of
    `before` (each synced to disk), wait until nginx applies it and restart the figures. A change that cannot be
    recorded is not made, and one whose state cannot be written leaves the log as it was: the log and the state
    agree, also on a full disk. When nginx does not confirm it, the change stands (the file holds it) and the log
    says so."""
    state = before.next(**changes)
    log = target.state_dir / CHANGELOG
    entry, span = _log_change(target, event, before, state, reason)
    try:
        routing.write(target.state_file, state)
    except OSError as exc:
        taken = _take_back(log, span)
        raise CanaryError(
            f"cannot write the routing state {target.state_file} ({exc.strerror or exc}): nothing changed"
            + ("" if taken else f" (its line in {log} stays)")
        ) from None
    try:
        wait_applied(target, state.serial)
    except CanaryError as exc:
        try:
            log_event(target.state_dir, target.name, "unconfirmed", state, state, f"serial {state.serial}: {exc}")
        except OSError:
            pass
        raise CanaryError(f"wrote the change, but {exc}; nginx applies it on its next request if it runs") from None
    restart_figures(target, entry["time"], state)
    return state


def _log_change(
    target: Target, event: str, before: RoutingState, state: RoutingState, reason: str
) -> tuple[dict, tuple[int, int]]:
    entry = log_entry(target.name, event, before, state, reason)
    try:
        return entry, append_line(target.state_dir / CHANGELOG, json.dumps(entry))
    except OSError as exc:
        raise CanaryError(
            f"cannot record the change in {target.state_dir / CHANGELOG} ({exc.strerror or exc}): nothing changed"
        ) from None


def _take_back(log: Path, span: tuple[int, int]) -> bool:
    try:
        return take_back(log, span)
    except OSError:
        return False


def restart_figures(target: Target, since: str, state: RoutingState) -> None:
    """Take the metrics baseline that `canary status` counts from; the change is made already, so a baseline that
    cannot be written (a full disk) leaves the last one (figures since the change before)."""
    try:
        write_baseline(target.state_dir, since, state.green_weight, snapshots(target))
    except OSError:
        pass


def record(target: Target, event: str, before: RoutingState, state: RoutingState, reason: str) -> None:
    """Append one event that changes no state (a start, a confirmed split) to the change log, and take the metrics
    baseline that `canary status` counts from."""
    entry, _ = _log_change(target, event, before, state, reason)
    restart_figures(target, entry["time"], state)


def log_event(
    state_dir: Path, target_name: str, event: str, before: RoutingState, state: RoutingState, reason: str, **extra
) -> dict:
    """Append one entry to the change log in `state_dir` (what `canary history` shows), synced to disk, or raise
    OSError and leave the log as it was; returns it."""
    entry = log_entry(target_name, event, before, state, reason, **extra)
    append_line(state_dir / CHANGELOG, json.dumps(entry))
    return entry


def log_entry(target_name: str, event: str, before: RoutingState, state: RoutingState, reason: str, **extra) -> dict:
    """One entry of the change log."""
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "event": event,
        "target": target_name,
        "blue_version": state.blue_version,
        "green_version": state.green_version,
        "green_slot": state.green_slot,
        "old_green_weight": before.green_weight,
        "new_green_weight": state.green_weight,
        "shadow": state.shadow,
        "serial": state.serial,
        **extra,
        "by": environment().user or getpass.getuser(),
        "reason": reason,
    }


def set_weight(
    target: Target,
    weight: int,
    reason: str = "",
    shadow: bool = False,
    expect: int | None = None,
    event: str = "set-weight",
) -> tuple[RoutingState, RoutingState]:
    """Give green `weight` percent (and mirror predictions to it if `shadow`). Returns the state before and after.

    With `expect` (a state's serial), change only if the state is still that one: a rollout or shadow run never
    overwrites what anybody changed meanwhile. A refused change leaves the state file untouched.
    """
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 100:
        raise CanaryError(f"weight must be a whole number from 0 to 100, got {weight!r}")
    with change_lock(target.state_file.parent):
        before = current(target)
        if expect is not None and before.serial != expect:
            raise SplitChanged(
                f"the state was changed by someone else (green now {before.green_weight}%); leaving it as it is"
            )
        if weight > 0 or shadow:
            require_green(before)
        if before.split != (weight, shadow) or routing.read(target.state_file) is None:
            after = commit(target, before, event, reason, green_weight=weight, shadow=shadow)
        else:  # nothing to change: confirm nginx applies it, and start the figures again from here
            wait_applied(target, before.serial)
            record(target, event, before, before, reason)
            after = before
    return before, after


def status(target: Target, now: dict[str, Snapshot | None] | None = None) -> dict:
    """The split nginx applies, each version's health, and its figures since the last change (or since start).
    `now`: both backends' `snapshots` if the caller just took them (the dashboard keeps them for its rates)."""
    baseline = read_baseline(target.state_dir)  # none yet, or damaged: figures since start
    in_file, in_nginx = routing.read(target.state_file), applied(target)
    state = in_file or routing.FALLBACK
    weight = in_nginx["green_weight"] if in_nginx else state.green_weight
    with ThreadPoolExecutor(2 * len(COLORS)) as pool:
        answering = dict(zip(COLORS, pool.map(target.serving, COLORS)))
        now = now if now is not None else pool.submit(snapshots, target).result()
    versions: dict[str, dict] = {}
    for color in COLORS:
        expected = state.blue_version if color == "blue" else state.green_version
        versions[color] = {
            "version": answering[color] or expected,
            "weight": weight if color == "green" else 100 - weight,
            "healthy": answering[color] is not None,
            "since_change": _json(figures_between(baseline.backends.get(color), now[color])),
        }
    serving = {color: versions[color]["version"] for color in COLORS}
    model = target.prediction_metrics
    if model.observed:  # what the answers predicted, where the service's own metrics do not say
        seen = observed_since(target, serving, baseline.since)
        for color in COLORS:
            versions[color]["since_change"] = _with_observed(versions[color]["since_change"], seen.get(color), model)
    labelled = accuracy_by_version(target, serving)
    pinned = pinned_since(target, baseline.since)  # counted apart: no gate judges them
    figures = {color: versions[color]["since_change"] or {} for color in COLORS}
    divergence = js_distance(figures["green"].get("class_rows") or {}, figures["blue"].get("class_rows") or {})
    values = [figures[color].pop("values", None) for color in ("green", "blue")]
    distance = ks_distance(values[0], values[1]) if values[0] and values[1] else None
    return {
        "target": target.name,
        "takeover": takeover_of(state, weight, answering),
        "green_weight": weight,
        "task": model.task,
        "class_divergence": None if divergence is None else round(divergence, 4),
        "ks_distance": None if distance is None else round(distance, 4),
        "labelled": labelled or {},
        "pinned": pinned,
        "shadow": bool(in_nginx["shadow"]) if in_nginx else state.shadow,
        "green_free": state.green_free,
        "nginx": in_nginx,
        "state_file": None if in_file is None else json.loads(in_file.model_dump_json()),
        "since": baseline.since,
        "backends": versions,
        "processes": target.processes(),
    }


def _json(figures: Figures | None) -> dict | None:
    """A version's figures as `canary status --json` shows them."""
    return None if figures is None else figures.to_json()


def _with_observed(figures: dict | None, seen: dict | None, model: PredictionMetrics) -> dict | None:
    """A version's figures since the change, with what its answers predicted where its metrics say nothing."""
    if figures is None or not seen:
        return figures
    if model.task == "regression":
        return {**figures, **seen}
    kept = {k: v for k, v in seen.items() if k in ("rows", "class_rows") and model.class_metric is None}
    if model.confidence_metric is None and seen.get("confidence_mean") is not None:
        kept["confidence_mean"] = seen["confidence_mean"]
    return {**figures, **kept}


def takeover_of(state: RoutingState, green_weight: int, answering: dict[str, str | None]) -> dict | None:
    """Green answering blue's share because blue does not answer (nginx fails blue's requests over to green), from
    the versions that answered; None when that is not so."""
    if (
        answering["blue"] is not None
        or answering["green"] is None
        or state.green_version is None
        or green_weight >= 100
    ):
        return None
    return {"blue_version": state.blue_version, "green_version": answering["green"], "blue_share": 100 - green_weight}


def takeover(target: Target) -> dict | None:
    """Whether the candidate is answering blue's share right now because blue is down (see takeover_of): what a
    rollout asks before it judges or advances a step (green compared with a blue that is not there)."""
    state = current(target)
    if state.green_version is None:
        return None
    with ThreadPoolExecutor(len(COLORS)) as pool:
        answering = dict(zip(COLORS, pool.map(target.serving, COLORS)))
    weight = (applied(target) or {}).get("green_weight", state.green_weight)
    return takeover_of(state, weight, answering)
