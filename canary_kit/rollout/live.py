"""A running rollout, seen and steered from outside its process (`canary dashboard`), through two small files in
the state folder's `rollouts/`:

- `current.json`: written atomically by the driver (run.py) when it starts, when a step's window starts, after
  each check and when it ends. It says which rollout (`started`, `pid`, `pid_started`), where it is (`state`:
  running | promoted | rolled back | paused | stopped | interrupted; `step`/`steps`, `weight`, `mode`,
  `window_started` and `hold_seconds` (fixed), `step_started`, `min_step_seconds`, `max_step_seconds` and `look`
  (sequential: the last look's verdict, reason and every gate's evidence, rewritten at each look)), how it ended
  (`reason`; `error` when an error or a kill ended it, not a verdict; `serial`, the routing state it left), the
  shadow phase's comparison when one ran, and every check kept so far as the report has them (with `wall`: the
  check's Unix time, for a time axis). It stays after the rollout ends: the last rollout.
  A `running` rollout whose process is gone was killed: `canary up`'s supervisor puts green back to 0% and closes
  it (`close`); `canary status` and the dashboard shout about a rollout that ended half-way (views.py).
- `control.json`: written (atomically) by whoever asks, `{"action": "pause" | "abort", "rollout": <started>, "by",
  "reason"}`. The driver reads it once per health-check tick (`check_every`, 1 s by default) while it holds a step,
  removes it and acts: pause leaves the split where it is (`canary rollout` exits 2), abort rolls green back to 0%
  (exit 1); both are printed by `canary rollout` and logged with who asked and why. A request naming another
  rollout (left over) is removed and ignored. The shadow phase does not read it.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from canary_kit.core.errors import CanaryError
from canary_kit.core.files import write_atomic
from canary_kit.core.processes import alive, created

FOLDER = "rollouts"
CURRENT = "current.json"
CONTROL = "control.json"
ACTIONS = ("pause", "abort")


class Interrupted(Exception):
    """Someone asked the running rollout to pause or abort."""

    def __init__(self, action: str, by: str, reason: str) -> None:
        self.action, self.by, self.reason = action, by, reason
        super().__init__(f"{action} asked by {by or 'someone'}{': ' + reason if reason else ''}")


class Channel:
    """The driver's side: publish where the rollout is, and take pause/abort requests meant for it."""

    def __init__(self, state_dir: Path, result) -> None:
        self.folder = Path(state_dir) / FOLDER
        self.result = result
        self.t0_wall = time.time()
        self.where: dict = {}
        self.pid_started = created(os.getpid())
        (self.folder / CONTROL).unlink(missing_ok=True)  # a request left for an earlier rollout
        self.publish(state="running")

    def publish(self, state: str | None = None, **where) -> None:
        self.where.update(where)
        r = self.result
        outcome = state or ("running" if r.outcome == "running" else r.outcome)
        checks = [{**c.to_json(), "wall": round(self.t0_wall + c.at, 1)} for c in r.checks]
        data = {
            "started": r.started,
            "pid": os.getpid(),
            "pid_started": self.pid_started,
            "state": outcome,
            "reason": r.reason,
            "final_weight": r.final_weight,
            "steps": r.spec.get("steps"),
            "hold_seconds": r.spec.get("hold_seconds"),
            "mode": r.spec.get("mode", "fixed"),
            "min_step_seconds": r.spec.get("min_step_seconds"),
            "max_step_seconds": r.spec.get("max_step_seconds"),
            "shadow": r.shadow,
            "checks": checks,
            "started_wall": self.t0_wall,
            "updated": time.time(),
            **self.where,
        }
        try:
            write_atomic(self.folder / CURRENT, json.dumps(data, default=str))
        except OSError:
            pass  # progress for the dashboard must never stop the rollout

    def check(self) -> None:
        """Raise Interrupted when a pause or abort for this rollout is waiting (and take it)."""
        path = self.folder / CONTROL
        if not path.exists():
            return
        try:
            request = json.loads(path.read_text())
        except (OSError, ValueError):
            request = None
        path.unlink(missing_ok=True)
        if (
            isinstance(request, dict)
            and request.get("action") in ACTIONS
            and request.get("rollout") == self.result.started
        ):
            raise Interrupted(request["action"], str(request.get("by") or ""), str(request.get("reason") or ""))


def _raw(state_dir: Path) -> dict | None:
    try:
        data = json.loads((Path(state_dir) / FOLDER / CURRENT).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _gone(data: dict) -> bool:
    """A `running` rollout whose process is not there any more (a pid the system gave to another process since
    is not it)."""
    try:
        pid, started = int(data.get("pid") or 0), data.get("pid_started")
        return data.get("state") == "running" and not alive(pid, float(started) if started else None)
    except (TypeError, ValueError):
        return data.get("state") == "running"


def read(state_dir: Path) -> dict | None:
    """The last rollout's progress (None: none yet, or unreadable). A `running` one whose process is gone is
    reported as `interrupted`."""
    data = _raw(state_dir)
    if data is not None and _gone(data):
        data["state"], data["reason"] = "interrupted", "its process ended without a word (killed?)"
    return data


def orphaned(state_dir: Path) -> dict | None:
    """The rollout that still says `running` though its process is gone (killed with SIGKILL, or its machine
    crashed), as it last said; None when there is none."""
    data = _raw(state_dir)
    return data if data is not None and _gone(data) else None


def close(state_dir: Path, data: dict, state: str, reason: str, **fields) -> None:
    """Say how a rollout that cannot say it itself ended (`data`: as it last said)."""
    ended = {**data, "state": state, "reason": reason, "updated": time.time(), **fields}
    write_atomic(Path(state_dir) / FOLDER / CURRENT, json.dumps(ended, default=str))


def request(state_dir: Path, action: str, by: str, reason: str = "", wait: float = 10.0) -> str:
    """Ask the running rollout to pause or abort; wait (up to `wait` s) until it has, and say how it ended."""
    if action not in ACTIONS:
        raise CanaryError(f"unknown rollout action {action!r}: pause or abort")
    running = read(state_dir)
    if running is None or running.get("state") != "running":
        raise CanaryError("no rollout is running")
    ask = {
        "action": action,
        "rollout": running["started"],
        "by": by,
        "reason": reason,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_atomic(Path(state_dir) / FOLDER / CONTROL, json.dumps(ask))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read(state_dir)
        if now and now.get("started") == running["started"] and now.get("state") != "running":
            return f"rollout {now['state']}: {now.get('reason', '')}; green at {now.get('final_weight')}%"
    return f"{action} asked; the rollout acts on it at its next health check (it may be between windows)"
