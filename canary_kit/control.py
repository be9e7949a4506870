"""Steer a running canary: read the split nginx applies, change it safely, and read each version's figures.

Two targets with the same interface: the local stack (`canary up`) and the docker compose stack. A change
replaces the routing state that nginx reads per request (routing.py), under a lock and only from the state the
caller expects, waits until nginx reports the new state, then logs the change and takes a metrics baseline.
nginx is never reloaded, so no client connection is closed by a change.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import re
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx
import yaml

from canary_kit import routing
from canary_kit.config import COLORS, CanaryError, Settings
from canary_kit.files import write_atomic
from canary_kit.metrics import Snapshot, figures_between
from canary_kit.routing import STATE_FILE, RoutingState
from canary_kit.stack import BASELINE, STACK_FILE

CHANGELOG = "changes.log"
APPLY_TIMEOUT = 5.0
COMPOSE_STATE_MOUNT = "/var/lib/canary"  # where the compose nginx reads the routing state folder
COMPOSE_NGINX_PORT = 8000  # the port nginx listens on inside its container (CANARY_LISTEN)


class SplitChanged(CanaryError):
    """The split is not what the caller expected: someone else changed it."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalTarget:
    """The stack that `canary up` runs, found through its state folder."""

    name = "local"

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.expanduser().absolute()
        stack_file = self.state_dir / STACK_FILE
        if not stack_file.is_file():
            raise CanaryError(f"the canary stack is not running (no {stack_file}); start it with `canary up`")
        try:
            state = json.loads(stack_file.read_text())
            alive = pid_alive(state["supervisor_pid"]) and pid_alive(state["nginx"]["pid"])
            self.settings = Settings(**state["settings"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CanaryError(f"{stack_file} is damaged ({exc}); restart the stack with `canary up`") from None
        if not alive:
            raise CanaryError(f"the canary stack in {self.state_dir} is not running; start it with `canary up`")
        self.state_file = self.state_dir / STATE_FILE
        self.split_url = f"{self.settings.url}/_nginx/split"

    def backend(self, color: str, path: str) -> str | None:
        """GET a backend path directly; None when it does not answer 200."""
        try:
            response = httpx.get(f"{self.settings.backend_url(color)}{path}", timeout=2)
        except httpx.HTTPError:
            return None
        return response.text if response.status_code == 200 else None

    def version(self, color: str) -> str:
        return self.settings.version(color)

    def log_mark(self) -> int:
        log = self.settings.state_dir / "logs" / "access.log"
        return log.stat().st_size if log.exists() else 0

    def log_since(self, mark: int) -> list[dict]:
        """nginx's JSON access-log entries written after `mark`."""
        with open(self.settings.state_dir / "logs" / "access.log", "rb") as log:
            log.seek(mark)
            return parse_log(log.read().decode(errors="replace"))


class ComposeTarget:
    """The docker compose stack: its routing state is a file in the folder the nginx service mounts, and nginx is
    asked on its published port; the backends are reached with `docker compose exec`."""

    name = "compose"

    def __init__(self, compose_file: Path, compose_cmd: str) -> None:
        self.compose_file = compose_file.absolute()
        self.compose_cmd = shlex.split(compose_cmd)
        if not self.compose_file.is_file():
            raise CanaryError(f"compose file {self.compose_file} not found")
        nginx = compose_service(self.compose_file, "nginx")
        self.state_dir = mounted_folder(nginx, COMPOSE_STATE_MOUNT, self.compose_file.parent)
        self.state_file = self.state_dir / STATE_FILE
        self.split_url = f"http://127.0.0.1:{published_port(nginx, COMPOSE_NGINX_PORT)}/_nginx/split"
        if applied(self) is None:
            raise CanaryError(
                f"the compose stack of {self.compose_file} is not running (nginx does not answer {self.split_url});"
                " start it with `docker compose up`"
            )

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [*self.compose_cmd, "-f", str(self.compose_file), *args]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise CanaryError(f"{self.compose_cmd[0]!r} not found: is Docker Compose installed?") from None
        except subprocess.TimeoutExpired:
            raise CanaryError(f"`{' '.join(argv[:2])} {' '.join(args[:3])}` did not answer within 60s") from None
        if check and result.returncode != 0:
            raise CanaryError(f"{' '.join(args[:3])} failed: {(result.stderr or result.stdout).strip()[-300:]}")
        return result

    def backend(self, color: str, path: str) -> str | None:
        result = self._run("exec", "-T", f"ml-{color}", "curl", "-fsS", f"http://127.0.0.1:3000{path}", check=False)
        return result.stdout if result.returncode == 0 else None

    def version(self, color: str) -> str:
        health = self.backend(color, "/health")
        return json.loads(health)["model_version"] if health else "?"

    def log_mark(self) -> str:
        return datetime.now(timezone.utc).isoformat(timespec="seconds")

    def log_since(self, mark: str) -> list[dict]:
        """nginx's JSON access-log entries (it logs to stdout here) from the second of `mark` on."""
        text = self._run("logs", "--no-color", "--no-log-prefix", "nginx").stdout
        return [entry for entry in parse_log(text) if entry.get("time", "") >= mark]


def compose_service(compose_file: Path, name: str) -> dict:
    try:
        spec = yaml.safe_load(compose_file.read_text()) or {}
        return spec["services"][name]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise CanaryError(f"{compose_file} has no readable `{name}` service ({exc})") from None


INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<colon>:?)-(?P<default>[^}]*))?\}")


def compose_variables(folder: Path) -> dict[str, str]:
    """What compose interpolates with: the project's .env file, overridden by the environment."""
    found = {}
    dotenv = folder / ".env"
    if dotenv.is_file():
        for line in dotenv.read_text().splitlines():
            name, sep, value = line.strip().partition("=")
            if sep and not name.startswith("#"):
                found[name.strip()] = value.strip().strip("'\"")
    return {**found, **os.environ}


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME-default}."""

    def value(match: re.Match) -> str:
        given = variables.get(match["name"])
        if match["default"] is not None and (given is None or (match["colon"] and not given)):
            return match["default"]
        return given or ""

    return INTERPOLATION.sub(value, text)


def mounted_folder(service: dict, target: str, base: Path) -> Path:
    """The host folder a compose service bind-mounts at `target` (short or long volume syntax)."""
    variables = compose_variables(base)
    for volume in service.get("volumes") or []:
        if isinstance(volume, str) and ":" in volume:
            source, _, rest = interpolate(volume, variables).partition(":")
            if rest.split(":")[0] == target:
                return (base / source).resolve()
        elif isinstance(volume, dict) and volume.get("target") == target and volume.get("source"):
            return (base / interpolate(volume["source"], variables)).resolve()
    raise CanaryError(f"the compose nginx service mounts no routing state folder at {target}")


def published_port(service: dict, container_port: int) -> int:
    """The host port a compose service publishes for `container_port` (short or long port syntax)."""
    for port in service.get("ports") or []:
        if isinstance(port, dict) and int(port.get("target", 0)) == container_port and port.get("published"):
            return int(port["published"])
        parts = str(port).split("/")[0].split(":")
        if len(parts) >= 2 and parts[-1] == str(container_port):
            return int(parts[-2])
    raise CanaryError(f"the compose nginx service publishes no host port for its port {container_port}")


def parse_log(text: str) -> list[dict]:
    """The JSON objects among log lines (nginx's own messages and partial lines are skipped)."""
    entries = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return entries


def applied(target, timeout: float = 1.0) -> dict | None:
    """The routing state nginx applies, asked on a fresh connection; None when nginx does not answer."""
    try:
        response = httpx.get(target.split_url, timeout=timeout, headers={"Connection": "close"})
    except httpx.HTTPError:
        return None
    return routing.applied_from(response.text) if response.status_code == 200 else None


def current(target) -> RoutingState:
    """The state in the file; a missing or invalid file counts as what nginx then applies (all to blue)."""
    return routing.read(target.state_file) or routing.FALLBACK


def split_of(target) -> tuple[int, bool]:
    """(green's weight, shadow on) as the routing state says."""
    state = current(target)
    return state.green_weight, state.shadow


@contextmanager
def change_lock(folder: Path):
    """One change at a time per routing state: concurrent `canary` commands wait for each other."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".routing.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def snapshots(target) -> dict[str, dict | None]:
    """Both backends' /metrics, read at the same time."""
    with ThreadPoolExecutor(len(COLORS)) as pool:
        texts = dict(zip(COLORS, pool.map(lambda color: target.backend(color, "/metrics"), COLORS)))
    return {color: None if text is None else Snapshot.parse(text).to_json() for color, text in texts.items()}


def wait_applied(target, serial: int, timeout: float = APPLY_TIMEOUT) -> None:
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


def set_weight(
    target, weight: int, reason: str = "", shadow: bool = False, expect: tuple[int, bool] | None = None
) -> tuple[int, int]:
    """Give green `weight` percent (and mirror predictions to it if `shadow`). Returns (old, new) weights.

    With `expect` (weight, shadow), change only if the state is still that: a rollout or shadow run never
    overwrites what an operator changed meanwhile. A refused change leaves the state file untouched.
    """
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 100:
        raise CanaryError(f"weight must be a whole number from 0 to 100, got {weight!r}")
    with change_lock(target.state_file.parent):
        before = current(target)
        if expect is not None and (before.green_weight, before.shadow) != expect:
            raise SplitChanged(
                f"the split was changed by someone else (green now {before.green_weight}%); leaving it as it is"
            )
        started = time.monotonic()
        state = before
        if (before.green_weight, before.shadow) != (weight, shadow) or routing.read(target.state_file) is None:
            state = before.next(weight, shadow)
            routing.write(target.state_file, state)
        wait_applied(target, state.serial)
        record = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "target": target.name,
            "old_green_weight": before.green_weight,
            "new_green_weight": weight,
            "shadow": shadow,
            "serial": state.serial,
            "applied_ms": round((time.monotonic() - started) * 1000, 1),
            "by": os.environ.get("CANARY_USER") or getpass.getuser(),
            "reason": reason,
        }
        with open(target.state_dir / CHANGELOG, "a") as log:
            log.write(json.dumps(record) + "\n")
        baseline = {"since": record["time"], "green_weight": weight, "backends": snapshots(target)}
        write_atomic(target.state_dir / BASELINE, json.dumps(baseline))
    return before.green_weight, weight


def status(target) -> dict:
    """The split nginx applies, each version's health, and its figures since the last change (or since start)."""
    baseline_file = target.state_dir / BASELINE
    baseline = json.loads(baseline_file.read_text()) if baseline_file.is_file() else {"backends": {}}
    in_file, in_nginx = routing.read(target.state_file), applied(target)
    weight = in_nginx["green_weight"] if in_nginx else current(target).green_weight
    now, versions = snapshots(target), {}
    for color in COLORS:
        versions[color] = {
            "version": target.version(color),
            "weight": weight if color == "green" else 100 - weight,
            "healthy": target.backend(color, "/readyz") is not None,
            "since_change": figures_between(baseline["backends"].get(color), now[color]),
        }
    return {
        "target": target.name,
        "green_weight": weight,
        "shadow": bool(in_nginx["shadow"]) if in_nginx else current(target).shadow,
        "nginx": in_nginx,
        "state_file": None if in_file is None else json.loads(in_file.model_dump_json()),
        "since": baseline.get("since"),
        "backends": versions,
    }
