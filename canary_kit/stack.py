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
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import httpx
import yaml

from canary_kit import probe, routing
from canary_kit.config import SLOTS, Settings
from canary_kit.errors import CanaryError
from canary_kit.files import UnsafeFolder, locked, private_folder, write_atomic
from canary_kit.nginx import OPERATOR_URL, LocalNginx, check_reachable, njs_module, operator_transport, worker_group
from canary_kit.processes import (
    COMPONENT,
    Child,
    alive,
    component_mark,
    created,
    describe_processes,
    kill_all,
    listeners,
    marked,
    port_in_use,
    stack_processes,
    stop_tree,
)
from canary_kit.readyz import ready, serving
from canary_kit.scrape import clear_baseline

STACK_FILE = "stack.json"
STACK_LOCK = ".stack.lock"  # held while stack.json is read and rewritten


def private_home(home: Path, bentoml_home: Path, pinned: list[str] | None = None) -> Path:
    """`home` made a BENTOML_HOME of its own (its own metrics folder) sharing bentoml_home's Bentos and models.

    With `pinned` (a Bento's model tags, NAME:VERSION), its model store holds exactly those models, each as its
    name's `latest`: BentoML resolves a service's `name:latest` again in the store when it serves a Bento from it,
    so a Bento built on an older model would otherwise serve the newest one (as its image never does)."""
    home.mkdir(parents=True, exist_ok=True)
    for store in ("models", "bentos"):
        target, link = bentoml_home / store, home / store
        target.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            if link.is_symlink() and link.resolve() == target.resolve() and (store == "bentos" or pinned is None):
                continue
            link.unlink() if link.is_symlink() else shutil.rmtree(link)
        if store == "models" and pinned is not None:
            _pin_models(link, target, pinned)
        else:
            link.symlink_to(target, target_is_directory=True)
    return home


def _pin_models(store: Path, shared: Path, tags: list[str]) -> None:
    """A model store of links to the shared one's `tags`, each its name's latest."""
    for tag in tags:
        name, _, version = tag.partition(":")
        folder = store / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / version).symlink_to(shared / name / version, target_is_directory=True)
        (folder / "latest").write_text(version)


def bento_models(bentoml_home: Path, name: str, version: str) -> list[str]:
    """The model tags a built Bento pins (its bento.yaml), NAME:VERSION each."""
    manifest = bentoml_home / "bentos" / name / version / "bento.yaml"
    try:
        data = yaml.safe_load(manifest.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    entries = list(data.get("models") or [])
    for service in data.get("services") or []:
        entries += (service or {}).get("models") or []
    tags = [str(e.get("tag")) for e in entries if isinstance(e, dict) and ":" in str(e.get("tag", ""))]
    return sorted(set(tags))


def backend_home(settings: Settings, slot: str, version: str | None = None) -> Path:
    """A private BENTOML_HOME for one slot: its own metrics folder, the shared Bentos, and the shared model store
    (for a Bento, only the models it was built with)."""
    pinned = None
    if settings.source == "bento" and version is not None:
        pinned = bento_models(settings.bentoml_home, settings.service_name, version)
    return private_home(settings.state_dir / slot / "bentoml", settings.bentoml_home, pinned)


def bentoml_bin() -> str:
    """The `bentoml` beside this Python (the virtualenv's), else the one on PATH."""
    bentoml = Path(sys.executable).with_name("bentoml")
    return str(bentoml) if bentoml.exists() else "bentoml"


def backend_child(settings: Settings, slot: str, version: str, die_with_parent: bool = False) -> Child:
    """`bentoml serve` for one version in one slot: the service's code with --arg VERSION_ARG=version, or the
    version's built Bento; its processes marked as the slot's."""
    if settings.source == "bento":
        target = [settings.bento_tag(version)]
    else:
        target = [settings.service, "--arg", f"{settings.version_arg}={version}"]
    argv = [bentoml_bin(), "serve", *target, "--host", "127.0.0.1"]
    argv += ["--port", str(settings.slot_port(slot))]
    env = {
        "BENTOML_HOME": str(backend_home(settings, slot, version)),
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONUNBUFFERED": "1",
        COMPONENT: component_mark(settings.state_dir, slot),
    }
    if settings.workers != 1:
        env["BENTOML_CONFIG_OPTIONS"] = f"services.{settings.service_name}.workers={settings.workers}"
    return Child(
        slot,
        argv,
        settings.state_dir / "logs" / f"{slot}.log",
        env,
        settings.project_dir,
        die_with_parent=die_with_parent,
    )


def missing_version(settings: Settings, version: str) -> str | None:
    """Why `version` cannot be served from this store, or None when it can (with source code and no model named,
    the service itself says so when it starts)."""
    if settings.source == "bento":
        where, tag = settings.bentoml_home / "bentos" / settings.service_name / version, settings.bento_tag(version)
        hint = f"build it: bentoml build --version {version}"
    elif settings.model_name is None:
        return None
    else:
        where, tag = settings.bentoml_home / "models" / settings.model_name / version, settings.model_tag(version)
        hint = "train it first"
    if where.is_dir():
        return None
    found = (
        sorted(p.name for p in where.parent.iterdir() if p.is_dir() and p.name != "latest")
        if where.parent.is_dir()
        else []
    )
    return f"{tag} is not in {where.parent.parent} ({hint}; versions there: {', '.join(found) or 'none'})"


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


def wait_ready(children: list[Child], urls: dict[str, str], timeout: float) -> None:
    """Poll each child's ready URL until all answer 200; fail early if a child exits, or if its worker processes
    keep dying while it starts (a service that crashes in its __init__ is restarted over and over)."""
    deadline = time.monotonic() + timeout
    pending = dict(urls)
    seen: dict[str, set[int]] = {child.name: set() for child in children}
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while pending:
            for child in children:
                code = child.exit_code()
                if code is not None:
                    raise CanaryError(f"{child.name} exited with code {code} while starting; {child.last_line()}")
                running = {p.pid for p in child.tree()[1:]}
                seen[child.name] |= running
                if len(seen[child.name] - running) >= 2:
                    died = len(seen[child.name] - running)
                    raise CanaryError(
                        f"{child.name} keeps crashing while starting (its worker died {died} times); "
                        f"{child.last_line()}"
                    )
            for name, url in list(pending.items()):
                try:
                    if client.get(url).status_code == 200:
                        del pending[name]
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise CanaryError(
                    f"not ready after {timeout:.0f}s: {', '.join(pending)} (logs in {children[0].log.parent})"
                )
            if pending:
                time.sleep(0.2)


def launch(settings: Settings, slot: str, version: str) -> Child:
    """Start `version` in `slot`, listed in stack.json from its first moment, and wait until it is ready and says
    it serves `version`; stop it, unlist it and raise if it does not get there within the ready timeout."""
    port = settings.slot_port(slot)
    if port_in_use("127.0.0.1", port):
        raise CanaryError(f"port {port} of slot {slot} is in use by another process")
    child = backend_child(settings, slot, version)
    child.start()
    record_backend(settings.state_dir, slot, backend_entry(settings, slot, version, child.pid))
    try:
        wait_ready([child], {f"{slot} ({version})": f"{settings.slot_url(slot)}/readyz"}, settings.ready_timeout)
        fits(settings, slot, version)
    except BaseException:
        record_backend(settings.state_dir, slot, None)  # first, so that the supervisor does not restart it
        child.stop()
        raise
    return child


def fits(settings: Settings, slot: str, version: str) -> None:
    """Refuse, in one line, a ready backend that says it serves another version, or that the configuration does not
    fit (its endpoints, the JSON paths of their predictions, the task: probe.py)."""
    url = settings.slot_url(slot)
    found = ready(url)
    if found is None or (found.reported is not None and found.reported != version):
        answered = "nothing" if found is None else f"version {found.reported}"
        raise CanaryError(f"{slot} answers as {answered}, not {version}")
    probe.check(url, settings.endpoints, settings.task, who=f"{settings.bento_tag(version)} ({slot})")


def retire(settings: Settings, slot: str) -> None:
    """Stop what runs in `slot` and unlist it: the process stack.json names, and any `bentoml serve` of ours left
    listening on the slot's port (a leftover of a killed command)."""
    entry = read_stack_file(settings.state_dir).get("backends", {}).get(slot)
    record_backend(settings.state_dir, slot, None)  # first, so that `canary up` does not report it as a crash
    if entry:
        stop_tree(entry["pid"], entry.get("started"))
    for owner in listeners(settings.slot_port(slot)):  # only one carrying our mark: never a stranger's server
        if marked(owner, component_mark(settings.state_dir, slot)):
            stop_tree(owner.pid, owner.create_time())
    kill_all(stack_processes(settings.state_dir, slot))  # workers whose `bentoml serve` was killed


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


def read_stack_file(state_dir: Path) -> dict:
    try:
        return json.loads((state_dir / STACK_FILE).read_text())
    except (OSError, ValueError):
        return {}


def record_backend(state_dir: Path, slot: str, entry: dict | None) -> None:
    """Say in stack.json what runs in `slot` now (None: nothing)."""
    with locked(state_dir / STACK_LOCK):
        stack = read_stack_file(state_dir)
        backends = stack.setdefault("backends", {})
        if entry is None:
            backends.pop(slot, None)
        else:
            backends[slot] = entry
        write_atomic(state_dir / STACK_FILE, json.dumps(stack, indent=2) + "\n")


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


def backend_entry(settings: Settings, slot: str, version: str, pid: int) -> dict:
    return {"version": version, "url": settings.slot_url(slot), "pid": pid, "started": created(pid)}


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
