"""The local canary stack: blue and green as real `bentoml serve` processes and nginx in front, as one unit.

    with Stack(settings) as stack:   # starts all three and waits until each is ready
        ...                          # leaving the block stops all three, whatever happened

Each version gets its own BENTOML_HOME (sharing the model store through symlinks), because `bentoml serve` wipes
and reuses `$BENTOML_HOME/prometheus_multiproc_dir`: two servers sharing one home report each other's counts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from canary_kit import routing
from canary_kit.config import COLORS, CanaryError, Settings
from canary_kit.files import write_atomic
from canary_kit.nginx import LocalNginx, njs_module
from penguin.features import MODEL_NAME

STACK_FILE = "stack.json"
BASELINE = "baseline.json"  # the metrics at the last change, for `canary status`


@dataclass
class Child:
    """One supervised process, started in its own session so that stopping it stops all it spawned."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def tree(self) -> list[psutil.Process]:
        """The process and all its descendants (bentoml's workers run in sessions of their own)."""
        try:
            leader = psutil.Process(self.proc.pid)
            return [leader, *leader.children(recursive=True)]
        except (psutil.NoSuchProcess, AttributeError):
            return []

    def stop(self, grace: float = 10.0) -> None:
        """Signal the process group to stop, then SIGKILL every process of the tree still there after `grace` s."""
        if self.proc is None:
            return
        tree = self.tree()  # taken first: once the leader is gone, its orphans can no longer be found
        try:
            os.killpg(self.proc.pid, self.stop_signal)
        except ProcessLookupError:
            pass
        _, alive = psutil.wait_procs(tree, timeout=grace)
        for straggler in alive:
            try:
                straggler.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        """SIGKILL the whole tree at once, as a crash would (used to test failover)."""
        for process in self.tree():
            process.kill()
        self.proc.wait(timeout=10)

    def last_lines(self, count: int = 5) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-count:])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def backend_home(settings: Settings, color: str) -> Path:
    """A private BENTOML_HOME for one version: its own metrics folder, the shared model store and Bentos."""
    home = settings.state_dir / color / "bentoml"
    home.mkdir(parents=True, exist_ok=True)
    for store in ("models", "bentos"):
        target, link = settings.bentoml_home / store, home / store
        target.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            if link.is_symlink() and link.resolve() == target.resolve():
                continue
            link.unlink() if link.is_symlink() else shutil.rmtree(link)
        link.symlink_to(target, target_is_directory=True)
    return home


def backend_child(settings: Settings, color: str) -> Child:
    """`bentoml serve` for one version: service.py with --arg model_version, or the version's built Bento."""
    version, port = settings.version(color), settings.backend_port(color)
    if settings.source == "bento":
        target = [settings.bento_tag(color)]
    else:
        target = ["service:PenguinClassifier", "--arg", f"model_version={version}"]
    bentoml = Path(sys.executable).with_name("bentoml")
    argv = [str(bentoml) if bentoml.exists() else "bentoml", "serve", *target, "--host", "127.0.0.1"]
    argv += ["--port", str(port)]
    env = {
        "BENTOML_HOME": str(backend_home(settings, color)),
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONUNBUFFERED": "1",
    }
    if settings.workers != 1:
        env["BENTOML_CONFIG_OPTIONS"] = f"services.penguin_classifier.workers={settings.workers}"
    return Child(color, argv, settings.state_dir / "logs" / f"{color}.log", env, settings.project_dir)


def preflight(settings: Settings) -> None:
    """Refuse, in one line, what would make the start fail half-way."""
    if shutil.which(settings.nginx_bin) is None:
        raise CanaryError(
            f"nginx is not installed ({settings.nginx_bin!r} not found): sudo apt-get install -y nginx libnginx-mod-http-js"
        )
    njs_module(settings.nginx_bin)
    if settings.source == "code" and not (settings.project_dir / "service.py").is_file():
        raise CanaryError(f"no service.py in {settings.project_dir}: run canary from the project folder")
    for color in COLORS:
        store = "bentos" if settings.source == "bento" else "models"
        where = settings.bentoml_home / store / MODEL_NAME / settings.version(color)
        if not where.is_dir():
            hint = "make bentos" if store == "bentos" else "python train_model.py"
            raise CanaryError(f"{settings.bento_tag(color)} is not in {where.parent.parent} (run `{hint}`)")
    named = [("nginx", settings.host, settings.port)]
    named += [(color, "127.0.0.1", settings.backend_port(color)) for color in COLORS]
    for name, host, port in named:
        if port_in_use(host, port):
            raise CanaryError(f"port {port} on {host} ({name}) is already in use")


def wait_ready(children: list[Child], urls: dict[str, str], timeout: float, headers: dict | None = None) -> None:
    """Poll each child's ready URL until all answer 200; fail early if a child exits."""
    deadline = time.monotonic() + timeout
    pending = dict(urls)
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while pending:
            for child in children:
                code = child.exit_code()
                if code is not None:
                    raise CanaryError(f"{child.name} exited with code {code} while starting:\n{child.last_lines()}")
            for name, url in list(pending.items()):
                try:
                    if client.get(url, headers=(headers or {}).get(name)).status_code == 200:
                        del pending[name]
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise CanaryError(f"not ready after {timeout:.0f}s: {', '.join(pending)} (logs in {children[0].log.parent})")
            if pending:
                time.sleep(0.2)


def through_nginx(settings: Settings) -> None:
    """Ask each version through nginx (pinned with X-Canary) and check that the right one answers."""
    pins = {"blue": "never", "green": "always"}
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        for color, pin in pins.items():
            try:
                response = client.get(f"{settings.url}/readyz", headers={"X-Canary": pin})
            except httpx.HTTPError as exc:
                raise CanaryError(f"nginx does not reach {color}: {exc}") from None
            answered = response.headers.get("x-model-version")
            if response.status_code != 200 or answered != settings.version(color):
                raise CanaryError(
                    f"through nginx, {color} answered {response.status_code} from version {answered}, "
                    f"not {settings.version(color)}"
                )


def initial_routing(settings: Settings) -> routing.RoutingState:
    """The split to start with: the one asked for, else the last one (it survives restarts), else the default."""
    path = settings.state_dir / routing.STATE_FILE
    last = routing.read(path)
    if settings.green_weight is None and last is not None:
        return last
    weight = routing.INITIAL_GREEN_WEIGHT if settings.green_weight is None else settings.green_weight
    state = (last or routing.FALLBACK).next(weight, shadow=False)
    routing.write(path, state)
    return state


class Stack:
    """Blue, green and nginx started together, stopped together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nginx = LocalNginx(settings)
        self.children: list[Child] = []
        self.started_at = 0.0
        self.routing: routing.RoutingState | None = None

    def start(self) -> "Stack":
        """Backends first; nginx once both are ready (so no early failure is ever held against them), then one
        request to each version through nginx. Returns when a client gets an answer from either version."""
        s = self.settings
        preflight(s)
        s.state_dir.mkdir(parents=True, exist_ok=True)
        (s.state_dir / BASELINE).unlink(missing_ok=True)  # figures from an earlier run mean nothing now
        self.nginx.write()
        self.routing = initial_routing(s)
        self.started_at = time.monotonic()
        backends = [backend_child(s, color) for color in COLORS]
        # SIGQUIT: nginx's graceful stop, finishing the requests in flight
        nginx = Child("nginx", self.nginx.command(), s.state_dir / "logs" / "nginx.log", stop_signal=signal.SIGQUIT)
        try:
            for child in backends:
                child.start()
            self.children = list(backends)
            wait_ready(backends, {c: f"{s.backend_url(c)}/readyz" for c in COLORS}, s.ready_timeout)
            nginx.start()
            self.children.append(nginx)
            wait_ready(self.children, {"nginx": f"http://{s.host}:{s.port}/_nginx/ping"}, 10)
            through_nginx(s)
        except BaseException:
            self.stop()
            raise
        self.write_state()
        return self

    def write_state(self) -> None:
        s = self.settings
        state = {
            "supervisor_pid": os.getpid(),
            "url": s.url,
            "backends": {
                c.name: {"version": s.version(c.name), "url": s.backend_url(c.name), "pid": c.proc.pid}
                for c in self.children
                if c.name in COLORS
            },
            "nginx": {"conf": str(self.nginx.main_conf), "pid": self.children[-1].proc.pid},
            "settings": json.loads(s.model_dump_json()),
        }
        write_atomic(s.state_dir / STACK_FILE, json.dumps(state, indent=2) + "\n")

    def exited(self) -> list[tuple[str, int]]:
        return [(c.name, code) for c in self.children if (code := c.exit_code()) is not None]

    def stop(self) -> None:
        """nginx first (no new requests), then the backends; remove the state file that says we run."""
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception as exc:  # keep stopping the others whatever happened to this one
                print(f"could not stop {child.name}: {exc}", file=sys.stderr)
        (self.settings.state_dir / STACK_FILE).unlink(missing_ok=True)

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
