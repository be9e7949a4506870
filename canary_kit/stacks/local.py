"""The local canary stack: blue and green as real `bentoml serve` processes and nginx in front, as one unit.

    with Stack(settings) as stack:   # starts them and waits until each is ready, through nginx too
        ...                          # leaving the block stops them all, whatever happened

Versions run in slots, each with its own port and its own BENTOML_HOME (sharing the model store through
symlinks; `bentoml serve` wipes and reuses `$BENTOML_HOME/prometheus_multiproc_dir`, so two servers sharing one
home would report each other's counts): blue always runs in slot `blue`, and green in `green_a` or `green_b`,
so that `canary deploy` can start the next version in the free one while the current one serves. `stack.json`
in the state folder lists what runs where; `canary deploy` and `canary finalize` keep it up to date, and
stopping the stack stops everything it lists. Every process of a backend carries the mark `CANARY_COMPONENT`
in its environment (processes.stack_processes finds them, orphans included); supervise.py restarts what dies.
A backend's own life (its home, its command, its start and stop, its line in stack.json) is backends.py's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from canary_kit.core import routing
from canary_kit.core.config import SLOTS, Settings
from canary_kit.core.errors import CanaryError
from canary_kit.core.files import UnsafeFolder, locked, private_folder, write_atomic
from canary_kit.core.processes import (
    Child,
    alive,
    created,
    describe_processes,
    kill_all,
    port_in_use,
    stack_processes,
)
from canary_kit.core.readyz import serving
from canary_kit.observe.scrape import clear_baseline
from canary_kit.stacks.backends import (
    STACK_FILE,
    STACK_LOCK,
    backend_child,
    backend_entry,
    fits,
    missing_version,
    read_stack_file,
    retire,
    wait_ready,
)
from canary_kit.stacks.nginx import (
    OPERATOR_URL,
    LocalNginx,
    check_reachable,
    njs_module,
    operator_transport,
    worker_group,
)


def preflight(settings: Settings, versions: list[str] | None = None) -> None:
    """Refuse, in one line, what would make the start fail half-way."""
    if shutil.which(settings.nginx_bin) is None:
        raise CanaryError(
            f"nginx is not installed ({settings.nginx_bin!r} not found): "
            "sudo apt-get install -y nginx libnginx-mod-http-js"
        )
    njs_module(settings.nginx_bin)
    check_reachable(settings)
    if settings.source == "code" and not settings.project_dir.is_dir():
        raise CanaryError(f"project folder {settings.project_dir} not found: run canary from the project folder")
    for version in versions or [settings.blue_version, settings.green_version]:
        problem = missing_version(settings, version)
        if problem:
            raise CanaryError(problem)
    named = [("nginx", settings.host, settings.port), ("blue", "127.0.0.1", settings.blue_port)]
    named += [("green", "127.0.0.1", settings.green_port), ("green", "127.0.0.1", settings.green_port_b)]
    for name, host, port in named:
        if port_in_use(host, port):
            raise CanaryError(f"port {port} on {host} ({name}) is already in use")


def through_nginx(settings: Settings, state: routing.RoutingState) -> None:
    """Ask each running version through nginx, pinned as the operator (through the admin socket: its pins apply
    whatever the public port's setting, and reach a version at 0%), and check that the right one answers."""
    pins = {"blue": ("never", state.blue_version), "green": ("always", state.green_version)}
    for color, (pin, version) in pins.items():
        if version is None:
            continue
        answered = serving(OPERATOR_URL, {settings.pin_header: pin}, operator_transport(settings))
        if answered != version:
            raise CanaryError(f"through nginx, {color} answered as version {answered}, not {version}")


def initial_state(settings: Settings) -> routing.RoutingState:
    """The state to start with: the last one (versions and split survive restarts; a damaged file is rebuilt from
    the change log), with the weight asked for; at the first start, the configured versions and the default split."""
    path = settings.state_dir / routing.STATE_FILE
    last = routing.read(path) or routing.recovered(path)
    if last is not None and last.green_version is None and settings.green_weight:
        raise CanaryError(
            "green serves no version (after `canary finalize`): start without --green-weight, then deploy"
        )
    if last is None or last.blue_version is None:
        weight = routing.INITIAL_GREEN_WEIGHT if settings.green_weight is None else settings.green_weight
        state = (last or routing.FALLBACK).next(
            green_weight=weight,
            shadow=False,
            green_slot="green_a",
            blue_version=settings.blue_version,
            green_version=settings.green_version,
        )
    elif settings.green_weight is not None and settings.green_weight != last.green_weight:
        state = last.next(green_weight=settings.green_weight)
    else:
        return last
    routing.write(path, state)
    return state


def state_folder(settings: Settings) -> Path:
    """The stack's state folder, private: created 0700 (0710 for nginx's workers' group when they run as another
    user), refused in one line when someone else could change it."""
    try:
        return private_folder(settings.state_dir, worker_group(settings))
    except UnsafeFolder as exc:
        raise CanaryError(str(exc)) from None


def still_running(state_dir: Path) -> None:
    """Refuse to start over a stack that still runs: its supervisor, or processes it left (killed with SIGKILL)."""
    stack = read_stack_file(state_dir)
    supervisor = stack.get("supervisor_pid")
    if supervisor and alive(supervisor, stack.get("supervisor_started")):
        raise CanaryError(
            f"the canary stack in {state_dir} is already running (canary up, pid {supervisor}); "
            f"`canary down --state-dir {state_dir}` stops it"
        )
    left = stack_processes(state_dir)
    if left:
        raise CanaryError(
            f"processes of an earlier canary stack in {state_dir} still run ({describe_processes(left)}); "
            f"`canary down --state-dir {state_dir}` stops them"
        )


class Stack:
    """Blue, green and nginx started together, stopped together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nginx = LocalNginx(settings)
        self.children: list[Child] = []
        self.started_at = 0.0
        self.state: routing.RoutingState | None = None

    def check(self) -> None:
        """Refuse, in one line, what would make the start fail: the versions to resume, or the configured ones."""
        last = routing.read(self.settings.state_dir / routing.STATE_FILE)
        resumed = [v for v in (last.blue_version, last.green_version) if v] if last and last.blue_version else None
        state_folder(self.settings)
        still_running(self.settings.state_dir)
        preflight(self.settings, resumed)

    def start(self) -> Stack:
        """Backends first; nginx once they are ready (so no early failure is ever held against them), then one
        request to each version through nginx. Returns when a client gets an answer from either version."""
        s = self.settings
        self.check()
        clear_baseline(s.state_dir)  # figures from an earlier run mean nothing now
        (s.state_dir / STACK_FILE).unlink(missing_ok=True)
        self.nginx.write()
        self.state = state = initial_state(s)
        self.started_at = time.monotonic()
        placed = [("blue", state.blue_version), (state.green_slot, state.green_version)]
        backends = [backend_child(s, slot, version, die_with_parent=True) for slot, version in placed if version]
        nginx = self.nginx_child()
        try:
            for child in backends:
                child.start()
            self.children = list(backends)
            wait_ready(backends, {c.name: f"{s.slot_url(c.name)}/readyz" for c in backends}, s.ready_timeout)
            for slot, version in placed:
                if version:
                    fits(s, slot, version)
            nginx.start()
            self.children.append(nginx)
            wait_ready(self.children, {"nginx": f"http://{s.host}:{s.port}/_nginx/ping"}, 10)
            through_nginx(s, state)
        except BaseException:
            self.stop()
            raise
        self.write_stack_file({slot: version for slot, version in placed if version})
        return self

    def started_state(self) -> routing.RoutingState:
        """The routing state the stack started with."""
        if self.state is None:
            raise CanaryError("the stack has not been started")
        return self.state

    def nginx_child(self) -> Child:
        """nginx, dying with us; SIGQUIT stops it gracefully, finishing the requests in flight."""
        log = self.settings.state_dir / "logs" / "nginx.log"
        return Child("nginx", self.nginx.command(), log, stop_signal=signal.SIGQUIT, die_with_parent=True)

    def write_stack_file(self, versions: dict[str, str]) -> None:
        s = self.settings
        nginx = self.children[-1].pid
        stack = {
            "supervisor_pid": os.getpid(),
            "supervisor_started": created(os.getpid()),
            "url": s.url,
            "backends": {
                c.name: backend_entry(s, c.name, versions[c.name], c.pid) for c in self.children if c.name != "nginx"
            },
            "nginx": {"conf": str(self.nginx.main_conf), "pid": nginx, "started": created(nginx)},
            "settings": json.loads(s.model_dump_json()),
        }
        with locked(s.state_dir / STACK_LOCK):
            write_atomic(s.state_dir / STACK_FILE, json.dumps(stack, indent=2) + "\n")

    def stop(self) -> None:
        """nginx first (no new requests), then every backend, ours or started later by `canary deploy` (read
        again at the end, in case a deploy listed one meanwhile); remove the state file that says we run."""
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception as exc:  # keep stopping the others whatever happened to this one
                print(f"could not stop {child.name}: {exc}", file=sys.stderr)
        for slot in SLOTS:
            try:
                retire(self.settings, slot)
            except Exception as exc:
                print(f"could not stop {slot}: {exc}", file=sys.stderr)
        left = stack_processes(self.settings.state_dir)  # whatever lost its parent on the way
        if left:
            print(f"stopping processes left behind: {describe_processes(left)}", file=sys.stderr)
            kill_all(left)
        (self.settings.state_dir / STACK_FILE).unlink(missing_ok=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
