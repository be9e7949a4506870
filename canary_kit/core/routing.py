"""The canary's state, read by nginx per request: green's weight, the shadow switch, green's slot, and the
versions that blue and green serve, in one small JSON file.

`canary` replaces the file atomically (write a temporary file, rename it over the old one), so nginx's workers
read either the old state or the new one, whole, from their next request on: no reload. nginx/canary.js reads
the weight, the shadow switch and green's slot; a file that is missing or invalid makes nginx send everything
to blue (see `FALLBACK`). The versions are for people and for `canary up` after a restart.

`RoutingState` is the file's rules, and canary.js applies the same ones: both are tested against every case in
tests/data/routing_states.json (which files are valid, and what nginx applies for each).

    {"green_weight": 10, "shadow": false, "green_slot": "green_a", "blue_version": "v1.0.0",
     "green_version": "v1.1.0", "serial": 7, "changed_at": "2026-11-26T10:00:00+00:00"}

`serial` grows by one with every change, so `canary` can tell when nginx applies the state it wrote.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from canary_kit.core.files import write_atomic

STATE_FILE = "routing.json"
CHANGELOG = "changes.log"  # beside the state: one JSON line per change (`canary history`)
INITIAL_GREEN_WEIGHT = 10  # a stack's first split, when nothing says otherwise


def _whole(value):
    """JSON has one kind of number: 10.0 and 1e1 are the whole number 10, as nginx's JSON.parse reads them."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(_whole)]


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


class RoutingState(BaseModel):
    """What nginx applies. A bad value is refused here, before anything is written."""

    model_config = ConfigDict(extra="ignore", strict=True)

    green_weight: Whole = Field(ge=0, le=100, description="percent of requests sent to green")
    shadow: bool = Field(False, description="mirror /predict to green (blue answers the clients)")
    green_slot: Literal["green_a", "green_b"] = Field("green_a", description="where green's version runs")
    blue_version: str | None = Field(None, description="the stable version blue serves")
    green_version: str | None = Field(None, description="the candidate green serves; None when green is free")
    serial: Whole = Field(0, ge=0, description="grows by one with every change")
    changed_at: str = ""

    def next(self, **changes) -> RoutingState:
        """The state after one change (validated: a bad value raises before any file is touched)."""
        fields = {**self.model_dump(), **changes, "serial": self.serial + 1}
        fields["changed_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        return RoutingState.model_validate(fields)

    @property
    def split(self) -> tuple[int, bool]:
        """(green's weight, shadow on): what a rollout or shadow run expects to find unchanged."""
        return self.green_weight, self.shadow

    @property
    def green_free(self) -> bool:
        """Green serves no version (after `canary finalize`): nginx sends requests pinned to green to blue."""
        return self.green_version is None and self.blue_version is not None

    def to_json(self) -> str:
        return self.model_dump_json() + "\n"


FALLBACK = RoutingState(green_weight=0, shadow=False, serial=0)  # what nginx applies without a valid file


def parse(text: bytes | str) -> RoutingState | None:
    """The state a file's content holds; None when it is invalid (nginx then applies FALLBACK). The content is
    read as strict JSON, like JSON.parse: UTF-8 without a byte order mark, no NaN or Infinity."""
    try:
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        return RoutingState.model_validate(json.loads(text, parse_constant=_no_constant))
    except (ValueError, ValidationError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None


def read(path: Path) -> RoutingState | None:
    """The state in the file; None when it is missing or invalid (nginx then applies FALLBACK)."""
    try:
        return parse(path.read_bytes())
    except OSError:
        return None


def recovered(path: Path) -> RoutingState | None:
    """For a missing or damaged state file: the versions and green's slot of the last change logged beside it,
    at what nginx applies meanwhile (green 0%, no shadow); None without such a log."""
    log = path.parent / CHANGELOG
    try:
        lines = log.read_text().splitlines() if log.is_file() else []
    except OSError:
        return None
    for line in reversed(lines):
        try:
            last = json.loads(line)
            return RoutingState(
                green_weight=0,
                green_slot=last.get("green_slot", "green_a"),
                blue_version=last.get("blue_version"),
                green_version=last.get("green_version"),
                serial=int(last.get("serial", 0)),
            )
        except (ValueError, ValidationError, TypeError, AttributeError):
            continue
    return None


def current(path: Path) -> RoutingState:
    """The state in force: the file's; when it is missing or invalid, what nginx applies (all to blue), with the
    versions and slot rebuilt from the change log."""
    return read(path) or recovered(path) or FALLBACK


def write(path: Path, state: RoutingState) -> None:
    """Replace the state (the caller holds the change lock): temporary files a killed writer left go first."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    if path.exists():
        write_atomic(path, state.to_json())  # its mode and group, as they were given to nginx
        return
    # A new file, read by nginx: as the folder's group (the local stack's workers, when they run as another user),
    # or by anyone where the folder is open to all (compose's mounted folder, read by the container's nginx user).
    folder = path.parent.stat()
    write_atomic(path, state.to_json(), 0o640 | (0o004 if folder.st_mode & 0o001 else 0), folder.st_gid)


def applied_from(text: str) -> dict | None:
    """What nginx's /_nginx/split reports: the state one worker applies, its pid, and a problem if it fell back."""
    try:
        report = json.loads(text)
    except ValueError:
        return None
    return report if isinstance(report, dict) and "green_weight" in report else None
