"""A version's `bentoml serve` in a slot of the local stack: its own BENTOML_HOME, its command, starting it and
waiting until it is ready and serves the version it should, stopping it; and `stack.json`, which lists what runs
in each slot (local.py starts the whole stack; targets.py deploys and finalizes versions with these).

    child = launch(settings, "green_b", "v1.2.0")   # listed in stack.json, ready, checked; else stopped and raised
    retire(settings, "green_a")                     # stopped and unlisted, leftovers of a killed command too
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import httpx
import yaml

from canary_kit.core.config import Settings
from canary_kit.core.errors import CanaryError
from canary_kit.core.files import locked, write_atomic
from canary_kit.core.processes import (
    COMPONENT,
    Child,
    component_mark,
    created,
    kill_all,
    listeners,
    marked,
    port_in_use,
    stack_processes,
    stop_tree,
)
from canary_kit.core.readyz import ready
from canary_kit.stacks import probe

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


def backend_entry(settings: Settings, slot: str, version: str, pid: int) -> dict:
    return {"version": version, "url": settings.slot_url(slot), "pid": pid, "started": created(pid)}
