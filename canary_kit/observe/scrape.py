"""Both versions' /metrics through a target, and the baseline kept of them at each change.

`snapshots` reads both backends at the same time; the control layer writes the baseline (`baseline.json` in the
state folder) after every change, and `canary status` counts each version's figures from it. A new stack starts
without one (`clear`): figures from an earlier run mean nothing then.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from canary_kit.core.config import COLORS
from canary_kit.core.files import write_atomic
from canary_kit.core.target import Target
from canary_kit.observe.metrics import Snapshot

BASELINE = "baseline.json"  # the metrics at the last change, for `canary status`


def snapshots(target: Target) -> dict[str, dict | None]:
    """Both backends' /metrics, read at the same time (None: that backend did not answer)."""
    with ThreadPoolExecutor(len(COLORS)) as pool:
        texts = dict(zip(COLORS, pool.map(lambda color: target.backend(color, "/metrics"), COLORS)))
    names = target.prediction_metrics
    return {color: None if text is None else Snapshot.parse(text, names).to_json() for color, text in texts.items()}


def write_baseline(state_dir: Path, since: str, green_weight: int, backends: dict[str, dict | None]) -> None:
    write_atomic(state_dir / BASELINE, json.dumps({"since": since, "green_weight": green_weight, "backends": backends}))


def read_baseline(state_dir: Path) -> dict:
    """The last baseline: {"since", "green_weight", "backends": {color: snapshot}}; {"backends": {}} when there is
    none yet or it is damaged (figures since start)."""
    try:
        baseline = json.loads((state_dir / BASELINE).read_text())
    except (OSError, ValueError):
        baseline = {}
    if not isinstance(baseline, dict) or not isinstance(baseline.get("backends"), dict):
        baseline = {"backends": {}}
    return baseline


def clear_baseline(state_dir: Path) -> None:
    (state_dir / BASELINE).unlink(missing_ok=True)
