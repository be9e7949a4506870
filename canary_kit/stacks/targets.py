"""The two stacks `canary` steers, each a target.Target: the local one that `canary up` runs, and docker compose.

Each knows where its routing state lives and how to ask nginx what it applies (`state_file`, `admin_url`), how
to reach a version's backend, and how to start a version as green or restart blue with one (`canary deploy`,
`canary finalize`). The local stack starts the next green in green's free slot while the current one serves;
compose recreates the `ml-green` (or `ml-blue`) container with the version's image.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from pydantic import ValidationError

from canary_kit.core import accesslog, logfiles, routing
from canary_kit.core.config import Settings, environment
from canary_kit.core.endpoints import PredictionMetrics
from canary_kit.core.errors import CanaryError
from canary_kit.core.files import UnsafeFolder, check_folder
from canary_kit.core.processes import alive
from canary_kit.core.readyz import CURL_HEAD, ready, ready_from_curl
from canary_kit.core.retention import Retention
from canary_kit.core.routing import STATE_FILE
from canary_kit.core.target import LogMark, Target
from canary_kit.stacks.backends import STACK_FILE, launch, missing_version, read_stack_file, retire
from canary_kit.stacks.compose import (
    compose_service,
    image_repository,
    image_tag,
    mounted_folder,
    project_name,
    published_port,
    run,
    set_variables,
)
from canary_kit.stacks.nginx import admin_socket

COMPOSE_STATE_MOUNT = "/var/lib/canary"  # where the compose nginx reads the routing state folder
COMPOSE_ADMIN_PORT = 8001  # nginx's admin server in its container (CANARY_ADMIN_LISTEN), on the host's loopback
COMPOSE_READY_TIMEOUT = 180.0  # seconds a recreated container has to answer as its new version
VERSION_VARIABLE = {"blue": "CANARY_BLUE_VERSION", "green": "CANARY_GREEN_VERSION"}  # image tags in the compose file


def project_settings() -> Settings | None:
    """The settings of the project here (`[tool.canary]`, CANARY_* variables); None when there are none."""
    try:
        return Settings()
    except ValidationError:
        return None


def parse_log(text: str) -> list[dict]:
    """The entries among log lines, with their predictions (accesslog.py; nginx's own messages and partial lines are
    skipped)."""
    return accesslog.parse(text)


class LocalTarget:
    """The stack that `canary up` runs, found through its state folder."""

    name = "local"
    access_log: Path

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.expanduser().absolute()
        try:
            if self.state_dir.is_dir():
                check_folder(self.state_dir)  # never one that someone else could change
        except UnsafeFolder as exc:
            raise CanaryError(str(exc)) from None
        stack_file = self.state_dir / STACK_FILE
        if not stack_file.is_file():
            raise CanaryError(f"the canary stack is not running (no {stack_file}); start it with `canary up`")
        try:
            stack = json.loads(stack_file.read_text())
            running = alive(stack["supervisor_pid"])  # nginx may be dead for a moment: its supervisor restarts it
            self.settings = Settings(**stack["settings"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CanaryError(f"{stack_file} is damaged ({exc}); restart the stack with `canary up`") from None
        if not running:
            raise CanaryError(f"the canary stack in {self.state_dir} is not running; start it with `canary up`")
        self.state_file = self.state_dir / STATE_FILE
        self.admin_url = "http://nginx"
        self.prediction_metrics = self.settings.prediction_metrics
        self.retention = self.settings.retention
        self.access_log = self.settings.state_dir / "logs" / "access.log"  # nginx's; the ledger reads on from its mark

    def admin_transport(self) -> httpx.HTTPTransport:
        return httpx.HTTPTransport(uds=str(admin_socket(self.settings)))

    def slot_of(self, color: str) -> str:
        return "blue" if color == "blue" else routing.current(self.state_file).green_slot

    def backend(self, color: str, path: str) -> str | None:
        """GET a path of a version's backend directly; None when it does not answer 200."""
        try:
            response = httpx.get(f"{self.settings.slot_url(self.slot_of(color))}{path}", timeout=2, trust_env=False)
        except httpx.HTTPError:
            return None
        return response.text if response.status_code == 200 else None

    def serving(self, color: str) -> str | None:
        """The version that answers as `color`, or None when it is not ready: the one the stack started in its slot,
        unless the service names another itself."""
        slot = self.slot_of(color)
        found = ready(self.settings.slot_url(slot))
        if found is None:
            return None
        return found.reported or read_stack_file(self.state_dir).get("backends", {}).get(slot, {}).get("version")

    def missing(self, version: str) -> str | None:
        return missing_version(self.settings, version)

    def start_green(self, version: str, timeout: float | None = None) -> str:
        """Start `version` in green's free slot, next to the running versions; returns the slot once it is ready."""
        slot = "green_b" if routing.current(self.state_file).green_slot == "green_a" else "green_a"
        retire(self.settings, slot)  # a leftover of an interrupted deploy
        settings = self.settings.model_copy(update={"ready_timeout": timeout}) if timeout else self.settings
        launch(settings, slot, version)
        return slot

    def undo_green(self, slot: str, previous: str | None) -> None:
        """A started green that will not be switched in: stop it (`previous` still runs in its own slot)."""
        retire(self.settings, slot)

    def discard(self, slot: str) -> None:
        """Stop what runs in `slot` (it no longer gets requests)."""
        retire(self.settings, slot)

    def restart_blue(self, version: str, previous: str) -> None:
        """Replace blue's process with one serving `version`, on blue's address; put `previous` back if that fails
        or is interrupted."""
        retire(self.settings, "blue")
        try:
            launch(self.settings, "blue", version)
        except BaseException as exc:
            launch(self.settings, "blue", previous)
            if isinstance(exc, CanaryError):
                raise CanaryError(f"{version} did not start as blue ({exc}); blue serves {previous} again") from None
            raise

    def processes(self) -> dict[str, dict]:
        """What the supervisor says of each process of the stack (stack.json): pid, state, restarts, last exit."""
        listed = read_stack_file(self.state_dir)
        found = {"nginx": listed.get("nginx") or {}, **listed.get("backends", {})}
        keys = ("pid", "version", "state", "restarts", "last_exit")
        return {name: {key: entry.get(key) for key in keys if key in entry} for name, entry in found.items()}

    def log_mark(self) -> LogMark:
        try:
            found = self.access_log.stat()
        except OSError:
            return LogMark(0, _now())
        return LogMark(found.st_size, _now(), logfiles.identity(self.access_log) or "", found.st_ino)

    def log_since(self, mark: LogMark) -> list[dict]:
        """nginx's JSON access-log entries written after `mark`: the marked file from its offset, then every newer
        one (the log rotated since) from its start; when the marked file is gone, every entry from its second on."""
        files = logfiles.family(self.access_log)
        marked = [at for at, path in enumerate(files) if _is_marked(path, mark)]
        parts = [(files[marked[-1]], mark.offset), *((p, 0) for p in files[marked[-1] + 1 :])] if marked else []
        entries = []
        for path, offset in parts or [(p, 0) for p in files]:
            try:
                with open(path, "rb") as log:
                    log.seek(offset if offset <= os.fstat(log.fileno()).st_size else 0)
                    entries += parse_log(log.read().decode(errors="replace"))
            except OSError:
                continue  # rotated out meanwhile
        return entries if parts else [e for e in entries if str(e.get("time", "")) >= mark.time]


class ComposeTarget:
    """The docker compose stack: its routing state is a file in the folder the nginx service mounts, nginx is
    asked on its published port, and the backends are reached with `docker compose exec`."""

    name = "compose"
    access_log: None

    def __init__(self, compose_file: Path, compose_cmd: str) -> None:
        self.compose_file = compose_file.absolute()
        self.compose_cmd = shlex.split(compose_cmd)
        if not self.compose_file.is_file():
            raise CanaryError(f"compose file {self.compose_file} not found")
        folder = self.compose_file.parent
        nginx = compose_service(self.compose_file, "nginx", self.compose_cmd)
        self.state_dir = mounted_folder(nginx, COMPOSE_STATE_MOUNT, folder)
        self.state_file = self.state_dir / STATE_FILE
        self.admin_url = f"http://127.0.0.1:{published_port(nginx, COMPOSE_ADMIN_PORT)}"
        self.repository = image_repository(compose_service(self.compose_file, "ml-green", self.compose_cmd))
        project = project_settings()
        self.prediction_metrics = project.prediction_metrics if project else PredictionMetrics()
        self.retention = project.retention if project else Retention()
        self.access_log = None  # nginx logs to stdout: the ledger reads `docker compose logs` since its mark
        try:
            answered = httpx.get(f"{self.admin_url}/_nginx/split", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            answered = False
        if not answered:
            raise CanaryError(
                f"the compose stack of {self.compose_file} is not running (nginx's admin server does not answer on "
                f"{self.admin_url}); start it with `docker compose up`"
            )

    def admin_transport(self) -> None:
        return None

    def processes(self) -> dict[str, dict]:
        """Docker restarts the containers (restart: unless-stopped); `docker compose ps` shows them."""
        return {}

    def _run(
        self, *args: str, check: bool = True, env: dict | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        return run(self.compose_cmd, self.compose_file, *args, check=check, env=env, timeout=timeout)

    def _container(self, service: str) -> str | None:
        """The id of the service's running container, found by compose's labels (faster than compose's commands)."""
        project = project_name(self.compose_file, self.compose_cmd)
        labels = ["--filter", f"label=com.docker.compose.project={project}"]
        labels += ["--filter", f"label=com.docker.compose.service={service}"]
        try:
            found = subprocess.run(["docker", "ps", "-q", *labels], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return found.stdout.split()[0] if found.returncode == 0 and found.stdout.split() else None

    def _exec(self, service: str, *command: str) -> subprocess.CompletedProcess | None:
        """`docker exec` in the service's container; None when it does not run."""
        container = self._container(service)
        try:
            return None if container is None else _docker("exec", container, *command)
        except (OSError, subprocess.SubprocessError):
            return None

    def backend(self, color: str, path: str) -> str | None:
        result = self._exec(f"ml-{color}", "curl", "-fsS", f"http://127.0.0.1:3000{path}")
        return result.stdout if result and result.returncode == 0 else None

    def serving(self, color: str) -> str | None:
        """The version that answers /readyz in the `ml-COLOR` container, or None when it is not ready: the one it
        names itself, else its image's tag (one image per version)."""
        result = self._exec(f"ml-{color}", *CURL_HEAD, "http://127.0.0.1:3000/readyz")
        found = None if result is None else ready_from_curl(result.returncode, result.stdout)
        if found is None:
            return None
        return found.reported or self._image_version(f"ml-{color}")

    def _image_version(self, service: str) -> str | None:
        """The tag of the image the service's container runs (images are NAME:VERSION)."""
        container = self._container(service)
        try:
            found = None if container is None else _docker("inspect", "--format", "{{.Config.Image}}", container)
        except (OSError, subprocess.SubprocessError):
            return None
        if found is None or found.returncode != 0:
            return None
        name, _, tag = found.stdout.strip().rpartition(":")
        return tag if name and "/" not in tag else None

    def missing(self, version: str) -> str | None:
        image = f"{self.repository}:{version}"
        try:
            found = (
                subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=30).returncode == 0
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"cannot ask docker for image {image}: {exc}"
        return None if found else f"image {image} not found (bentoml build, then bentoml containerize {image})"

    def _recreate(self, color: str, version: str, timeout: float = COMPOSE_READY_TIMEOUT) -> None:
        """Run `ml-COLOR` from the version's image (pinned in .env) and wait until it answers as that version."""
        set_variables(self.compose_file.parent, {VERSION_VARIABLE[color]: version})
        env = {**os.environ, VERSION_VARIABLE[color]: version}  # compose reads the rest of .env itself
        self._run("up", "-d", "--no-deps", f"ml-{color}", env=env, timeout=COMPOSE_READY_TIMEOUT)
        deadline = time.monotonic() + timeout
        while (answered := self.serving(color)) != version:
            if time.monotonic() > deadline:
                raise CanaryError(
                    f"ml-{color} did not answer as {version} within {timeout:.0f}s (it answers: {answered})"
                )
            time.sleep(1)

    def start_green(self, version: str, timeout: float | None = None) -> str:
        """Recreate ml-green from the version's image (green has no traffic then); put the old one back if that
        fails or is interrupted."""
        previous = self.serving("green") or image_tag(compose_service(self.compose_file, "ml-green", self.compose_cmd))
        slot = routing.current(self.state_file).green_slot  # compose has one green container: its slot never changes
        try:
            self._recreate("green", version, timeout or COMPOSE_READY_TIMEOUT)
        except BaseException as exc:
            self.undo_green(slot, previous)
            if isinstance(exc, CanaryError):
                raise CanaryError(f"{exc}; ml-green runs {previous or 'nothing'} again") from None
            raise
        return slot

    def undo_green(self, slot: str, previous: str | None) -> None:
        """A recreated green that will not be switched in: ml-green back to the image of `previous` (compose has
        one green container, so `slot` is the one it always answers in)."""
        if previous:
            self._recreate("green", previous)

    def discard(self, slot: str) -> None:
        """Compose keeps ml-green running (the next deploy recreates it): stopping it would make requests pinned to
        green wait for a connect time-out before they fail over."""

    def restart_blue(self, version: str, previous: str) -> None:
        """Recreate ml-blue from the version's image; from the image of `previous` again if that fails."""
        try:
            self._recreate("blue", version)
        except BaseException as exc:
            self._recreate("blue", previous)
            if isinstance(exc, CanaryError):
                raise CanaryError(f"{exc}; ml-blue runs {previous} again") from None
            raise

    def log_mark(self) -> LogMark:
        return LogMark(0, _now())

    def log_since(self, mark: LogMark) -> list[dict]:
        """nginx's JSON access-log entries (it logs to stdout here) from the second of `mark` on."""
        text = self._run("logs", "--no-color", "--no-log-prefix", "nginx").stdout
        return [entry for entry in parse_log(text) if entry.get("time", "") >= mark.time]


def _is_marked(path: Path, mark: LogMark) -> bool:
    """Whether `path` is the log file `mark` was taken in: by its identity, or its inode while it had no line."""
    if mark.file:
        return logfiles.identity(path) == mark.file
    try:
        return path.stat().st_ino == mark.inode
    except OSError:
        return False


def _docker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=30)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def open_target(state_dir: Path | None, compose: bool, compose_file: Path) -> Target:
    """The stack to act on: the compose one (`compose`), else the local one, found through its state folder."""
    if compose:
        return ComposeTarget(compose_file, environment().compose_cmd or compose_command())
    return LocalTarget(local_state_dir(state_dir))


def local_state_dir(state_dir: Path | None) -> Path:
    """The local stack's state folder: `state_dir`, else $CANARY_STATE_DIR, else .canary (config.Environment)."""
    return (state_dir or environment().state_dir).expanduser().absolute()


def compose_command() -> str:
    """Compose v2 (`docker compose`) where it answers, else v1's `docker-compose`."""
    try:
        v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        v2 = False
    return "docker compose" if v2 or shutil.which("docker-compose") is None else "docker-compose"
