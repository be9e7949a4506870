"""Both versions' /metrics through a target, and the baseline kept of them at each change.

`snapshots` reads both backends at the same time; the control layer writes the baseline (`baseline.json` in the
state folder) after every change, and `canary status` counts each version's figures from it. A new stack starts
without one (`clear`): figures from an earlier run mean nothing then.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from canary_kit.core.config import COLORS
from canary_kit.core.files import write_atomic
from canary_kit.core.target import Target
from canary_kit.observe.metrics import Snapshot

BASELINE = "baseline.json"  # the metrics at the last change, for `canary status`


@dataclass(frozen=True)
class Baseline:
    """The figures at the last change: when it was, green's weight then, and each backend's snapshot (None: it did
    not answer). Empty when there is none yet or it is damaged (figures since start)."""

    since: str | None = None
    green_weight: int | None = None
    backends: dict[str, Snapshot | None] = field(default_factory=dict)


def snapshots(target: Target) -> dict[str, Snapshot | None]:
    """Both backends' /metrics, read at the same time (None: that backend did not answer)."""
    with ThreadPoolExecutor(len(COLORS)) as pool:
        texts = dict(zip(COLORS, pool.map(lambda color: target.backend(color, "/metrics"), COLORS)))
    names = target.prediction_metrics
    return {color: None if text is None else Snapshot.parse(text, names) for color, text in texts.items()}


def write_baseline(state_dir: Path, since: str, green_weight: int, backends: dict[str, Snapshot | None]) -> None:
    snaps = {color: None if snap is None else snap.to_json() for color, snap in backends.items()}
    write_atomic(state_dir / BASELINE, json.dumps({"since": since, "green_weight": green_weight, "backends": snaps}))


def read_baseline(state_dir: Path) -> Baseline:
    """The last baseline (an empty one when there is none yet or it is damaged)."""
    try:
        data = json.loads((state_dir / BASELINE).read_text())
    except (OSError, ValueError):
        return Baseline()
    if not isinstance(data, dict) or not isinstance(data.get("backends"), dict):
        return Baseline()
    try:
        backends = {
            color: None if snap is None else Snapshot.from_json(snap) for color, snap in data["backends"].items()
        }
    except (AttributeError, TypeError, ValueError, IndexError):  # a snapshot that is not one
        return Baseline()
    return Baseline(data.get("since"), data.get("green_weight"), backends)


def clear_baseline(state_dir: Path) -> None:
    (state_dir / BASELINE).unlink(missing_ok=True)
