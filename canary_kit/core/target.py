"""What `canary` steers, as one interface: a running stack (targets.py has the two there are, the local one and
docker compose). Control, release, rollout, shadow and the ledger know a stack only through this.

A stack has a routing state file that nginx reads per request (`state_file`, in `state_dir` with the change log),
an admin server that says what nginx applies (`admin_url`, reached through `admin_transport()`), a backend per
color (`backend`, `serving`), a way to run another version as green or as blue, and nginx's JSON access log,
read from a `LogMark` on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from canary_kit.core.endpoints import PredictionMetrics
from canary_kit.core.retention import Retention


@dataclass(frozen=True)
class LogMark:
    """Where nginx's access log stood at one moment: the size of the log file in bytes and the file's identity and
    inode (where the stack writes one: logfiles.py follows it through rotation) and the UTC time in ISO form, to
    the second (where the log is read by time). `LogMark()`: the start."""

    offset: int = 0
    time: str = ""
    file: str = ""  # logfiles.identity of the log file then ("": it had no whole line yet)
    inode: int = 0


class Target(Protocol):
    """A running canary stack: its routing state, nginx's admin server, both versions' backends, nginx's log."""

    name: str  # "local" | "compose", in the change log
    state_dir: Path  # the change log, the metrics baseline, the ledger, rollout reports
    state_file: Path  # the routing state nginx reads per request
    admin_url: str  # nginx's admin server (/_nginx/split)
    prediction_metrics: PredictionMetrics
    retention: Retention

    @property
    def access_log(self) -> Path | None:
        """nginx's access log file; None: read through log_since only."""
        ...

    def admin_transport(self) -> httpx.HTTPTransport | None:
        """How to reach `admin_url` (a Unix socket), or None for plain TCP."""
        ...

    def backend(self, color: str, path: str) -> str | None:
        """GET `path` of the color's backend directly; its body, or None when it does not answer 200."""
        ...

    def serving(self, color: str) -> str | None:
        """The version that answers /readyz as `color` (readyz.version_of), or None when it is not ready."""
        ...

    def missing(self, version: str) -> str | None:
        """Why `version` cannot be run here, or None when it can."""
        ...

    def start_green(self, version: str, timeout: float | None = None) -> str:
        """Run `version` where green can be switched to it; returns the green slot it answers in."""
        ...

    def undo_green(self, slot: str, previous: str | None) -> None:
        """A green that `start_green` started in `slot` will not be switched in: leave green as it was, serving
        `previous` (None: nothing)."""
        ...

    def discard(self, slot: str) -> None:
        """What runs in the green slot `slot` no longer gets requests: let it go."""
        ...

    def restart_blue(self, version: str, previous: str) -> None:
        """Make blue serve `version`; serving `previous` again if that fails or is interrupted."""
        ...

    def processes(self) -> dict[str, dict]:
        """The stack's supervised processes (pid, state, restarts, last exit); empty where the stack has none."""
        ...

    def log_mark(self) -> LogMark:
        """Where nginx's access log stands now."""
        ...

    def log_since(self, mark: LogMark) -> list[dict]:
        """nginx's JSON access-log entries written from `mark` on."""
        ...
