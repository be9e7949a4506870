"""Steer a running canary: read the split, change it safely, and read each version's health and figures.

Two targets with the same interface: the local stack (`canary up`) and the docker compose stack. Every change
renders the committed template, has nginx check it (`nginx -t`), swaps it in atomically, reloads nginx
gracefully, waits until nginx answers with the new split, then logs the change and takes a metrics baseline.
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
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx

from canary_kit.config import COLORS, CanaryError, Settings
from canary_kit.metrics import Snapshot, figures_between
from canary_kit.nginx import (
    ROUTES_TEMPLATE,
    LocalNginx,
    mirror_directive,
    read_template,
    render,
    split_directive,
    write_atomic,
)
from canary_kit.stack import BASELINE, STACK_FILE

CHANGELOG = "changes.log"
APPLY_TIMEOUT = 5.0
SPLIT_BLOCK = re.compile(r"split_clients\s+\S+\s+\$canary_by_weight\s*\{(?P<body>[^}]*)\}")
REPORTED = re.compile(r'location = /_nginx/split \{[^}]*return 200 "(?P<text>[^"\\]*)')
MIRROR = re.compile(r"^\s*mirror\s+(?P<to>\S+);", re.M)


class SplitChanged(CanaryError):
    """The split is not what the caller expected: someone else changed it."""


def weight_of(routes: str) -> int:
    """Green's weight in a rendered routes config."""
    found = SPLIT_BLOCK.search(routes)
    if found is None:
        raise CanaryError("the running nginx config has no canary split_clients block")
    body = found.group("body")
    share = re.search(r"(\d+(?:\.\d+)?)%\s+green", body)
    if share:
        return int(float(share.group(1)))
    return 100 if re.search(r"\*\s+green", body) else 0


def shadow_of(routes: str) -> bool:
    """Whether a rendered routes config mirrors predictions to green."""
    found = MIRROR.search(routes)
    return found is not None and found.group("to") != "off"


def reported_by(routes: str) -> str:
    """What nginx running this config answers on /_nginx/split."""
    found = REPORTED.search(routes)
    return found.group("text").strip() if found else ""


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
        self.nginx = LocalNginx(self.settings)

    def routes(self) -> str:
        return self.nginx.routes()

    def render(self, weight: int, shadow: bool = False) -> str:
        return self.nginx.render_routes(weight, shadow)

    def apply(self, routes: str) -> None:
        self.nginx.apply(routes)

    def reload(self) -> None:
        self.nginx.reload()

    def running_split(self) -> str | None:
        return self.nginx.running_split()

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
    """The docker compose stack: nginx and the backends are reached with `docker compose exec`."""

    name = "compose"

    def __init__(self, state_dir: Path, compose_file: Path, compose_cmd: str) -> None:
        self.state_dir = state_dir.expanduser().absolute()
        self.compose_file = compose_file.absolute()
        self.compose_cmd = shlex.split(compose_cmd)
        self.templates = self.compose_file.parent / "nginx"
        if not self.compose_file.is_file():
            raise CanaryError(f"compose file {self.compose_file} not found")
        if not self._run("ps", "-q", "nginx").stdout.strip():
            raise CanaryError(f"the compose stack of {self.compose_file} is not running; start it with `docker compose up`")
        self._env = dict(
            line.split("=", 1) for line in self.exec("nginx", "env").splitlines() if line.startswith("CANARY_")
        )

    def _run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        argv = [*self.compose_cmd, "-f", str(self.compose_file), *args]
        try:
            result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise CanaryError(f"{self.compose_cmd[0]!r} not found: is Docker Compose installed?") from None
        except subprocess.TimeoutExpired:
            raise CanaryError(f"`{' '.join(argv[:2])} {' '.join(args[:3])}` did not answer within 60s") from None
        if check and result.returncode != 0:
            raise CanaryError(f"{' '.join(args[:3])} failed: {(result.stderr or result.stdout).strip()[-300:]}")
        return result

    def exec(self, service: str, *command: str, stdin: str | None = None) -> str:
        return self._run("exec", "-T", service, *command, stdin=stdin).stdout

    def routes(self) -> str:
        return self.exec("nginx", "cat", "/etc/nginx/conf.d/canary.conf")

    def render(self, weight: int, shadow: bool = False) -> str:
        variables = {**self._env, "CANARY_SPLIT": split_directive(weight), "CANARY_MIRROR": mirror_directive(shadow)}
        return render(read_template(ROUTES_TEMPLATE, self.templates), variables)

    def apply(self, routes: str) -> None:
        """Inside the nginx container, as locally: `nginx -t` on a probe copy first, then an atomic swap, reload."""
        script = (
            "set -e; probe=$(mktemp -d); trap 'rm -rf \"$probe\"' EXIT; cat > \"$probe/canary.conf\"; "
            "for f in /etc/nginx/conf.d/*.conf; do [ \"$f\" = /etc/nginx/conf.d/canary.conf ] || cp \"$f\" \"$probe/\"; done; "
            "sed \"s#/etc/nginx/conf.d/\\*.conf#$probe/*.conf#\" /etc/nginx/nginx.conf > \"$probe/nginx.probe\"; "
            "nginx -t -q -c \"$probe/nginx.probe\" || exit 3; "
            "cp \"$probe/canary.conf\" /etc/nginx/conf.d/.canary.conf.next; "
            "mv /etc/nginx/conf.d/.canary.conf.next /etc/nginx/conf.d/canary.conf; nginx -s reload"
        )
        result = self._run("exec", "-T", "nginx", "sh", "-c", script, stdin=routes, check=False)
        if result.returncode == 3:
            raise CanaryError(f"nginx -t rejected the config: {(result.stderr or result.stdout).strip()[-300:]}")
        if result.returncode != 0:
            raise CanaryError(f"applying the config failed: {(result.stderr or result.stdout).strip()[-300:]}")

    def reload(self) -> None:
        self.exec("nginx", "nginx", "-s", "reload")

    def running_split(self) -> str | None:
        listen = self._env.get("CANARY_LISTEN", "8000").rsplit(":", 1)[-1]
        result = self._run("exec", "-T", "nginx", "curl", "-fsS", f"http://127.0.0.1:{listen}/_nginx/split", check=False)
        return result.stdout.strip() if result.returncode == 0 else None

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


@contextmanager
def change_lock(state_dir: Path):
    """One change at a time: concurrent `canary` commands wait for each other."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "control.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def snapshots(target) -> dict[str, dict | None]:
    found = {}
    for color in COLORS:
        text = target.backend(color, "/metrics")
        found[color] = None if text is None else Snapshot.parse(text).to_json()
    return found


def set_weight(
    target, weight: int, reason: str = "", shadow: bool = False, expect: tuple[int, bool] | None = None
) -> tuple[int, int]:
    """Give green `weight` percent (and mirror predictions to it if `shadow`). Returns (old, new) weights.

    With `expect` (weight, shadow), change only if the stack is still in that state: a rollout or shadow run
    never overwrites what an operator changed meanwhile. A refused change leaves the running config untouched.
    """
    if not 0 <= weight <= 100:
        raise CanaryError(f"weight must be a whole number from 0 to 100, got {weight}")
    with change_lock(target.state_dir):
        current = target.routes()
        old = weight_of(current)
        if expect is not None and (old, shadow_of(current)) != expect:
            raise SplitChanged(f"the split was changed by someone else (green now {old}%); leaving it as it is")
        routes = target.render(weight, shadow)
        wanted = reported_by(routes)
        if routes != current:
            target.apply(routes)
        elif target.running_split() != wanted:
            target.reload()  # the file is right but nginx runs an older one (an earlier change was interrupted)
        deadline = time.monotonic() + APPLY_TIMEOUT
        while target.running_split() != wanted:
            if time.monotonic() > deadline:
                raise CanaryError(f"nginx did not pick up the new split within {APPLY_TIMEOUT:.0f}s")
            time.sleep(0.05)
        record = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "target": target.name,
            "old_green_weight": old,
            "new_green_weight": weight,
            "shadow": shadow,
            "by": os.environ.get("CANARY_USER") or getpass.getuser(),
            "reason": reason,
        }
        with open(target.state_dir / CHANGELOG, "a") as log:
            log.write(json.dumps(record) + "\n")
        baseline = {"since": record["time"], "green_weight": weight, "backends": snapshots(target)}
        write_atomic(target.state_dir / BASELINE, json.dumps(baseline))
    return old, weight


def status(target) -> dict:
    """The split, each version's health, and its figures since the last change (or since start)."""
    baseline_file = target.state_dir / BASELINE
    baseline = json.loads(baseline_file.read_text()) if baseline_file.is_file() else {"backends": {}}
    weight = weight_of(target.routes())
    now, versions = snapshots(target), {}
    for color in COLORS:
        versions[color] = {
            "version": target.version(color),
            "weight": weight if color == "green" else 100 - weight,
            "healthy": target.backend(color, "/readyz") is not None,
            "since_change": figures_between(baseline["backends"].get(color), now[color]),
        }
    return {"target": target.name, "green_weight": weight, "since": baseline.get("since"), "backends": versions}
