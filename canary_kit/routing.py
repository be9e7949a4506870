"""The routing state nginx reads per request: green's weight and the shadow switch, in one small JSON file.

`canary` replaces the file atomically (write a temporary file, rename it over the old one), so nginx's workers
read either the old state or the new one, whole, from their next request on: no reload. nginx/canary.js reads
it; a file that is missing or invalid makes nginx send everything to blue (see `FALLBACK`).

    {"green_weight": 10, "shadow": false, "serial": 7, "changed_at": "2026-11-26T10:00:00+00:00"}

`serial` grows by one with every change, so `canary` can tell when nginx applies the state it wrote.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from canary_kit.files import write_atomic

STATE_FILE = "routing.json"
INITIAL_GREEN_WEIGHT = 10  # a stack's first split, when nothing says otherwise


class RoutingState(BaseModel):
    """What nginx applies. A bad value is refused here, before anything is written."""

    model_config = ConfigDict(extra="ignore", strict=True)

    green_weight: int = Field(ge=0, le=100, description="percent of requests sent to green")
    shadow: bool = Field(False, description="mirror /predict to green (blue answers the clients)")
    serial: int = Field(0, ge=0, description="grows by one with every change")
    changed_at: str = ""

    def next(self, green_weight: int, shadow: bool) -> "RoutingState":
        """The state after one change (validated: a bad weight raises before any file is touched)."""
        return RoutingState(
            green_weight=green_weight,
            shadow=shadow,
            serial=self.serial + 1,
            changed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    def to_json(self) -> str:
        return self.model_dump_json() + "\n"


FALLBACK = RoutingState(green_weight=0, shadow=False, serial=0)  # what nginx applies without a valid file


def read(path: Path) -> RoutingState | None:
    """The state in the file; None when it is missing or invalid (nginx then applies FALLBACK)."""
    try:
        return RoutingState.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def write(path: Path, state: RoutingState) -> None:
    write_atomic(path, state.to_json())


def applied_from(text: str) -> dict | None:
    """What nginx's /_nginx/split reports: the state one worker applies, its pid, and a problem if it fell back."""
    try:
        report = json.loads(text)
    except ValueError:
        return None
    return report if isinstance(report, dict) and "green_weight" in report else None
