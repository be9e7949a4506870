"""Supervision of the local stack: `canary up` restarts whatever of it dies, and `canary down` stops it from its
state folder alone.

    supervise(stack, report)   # after Stack.start(), in the thread that started it: until Ctrl-C or a stop signal

A component is nginx or a backend slot that stack.json lists (deploy and finalize add and remove slots as they
go; a slot they unlist is never restarted). When its process dies, every process still carrying its mark is
killed first (a `bentoml serve` killed with SIGKILL leaves its workers holding its port; an nginx master, its
workers holding :8000), then it is started again: at once the first time, then after `restart_delay`, doubling up
to `restart_delay_max` while it keeps dying within `stable_seconds` of its start, and never again past
`restart_limit` deaths in a row. Each death and restart goes to the change log (`canary history`) and to its
entry in stack.json (`canary status`). The processes it starts die with it (PR_SET_PDEATHSIG), even when it is
killed with SIGKILL. Every few seconds it also rotates the logs past their size (rotation.py), in a thread.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from canary_kit.core import routing
from canary_kit.core.config import Settings
from canary_kit.core.errors import CanaryError
from canary_kit.core.files import locked, write_atomic
from canary_kit.core.processes import (
    Child,
    alive,
    created,
    describe_processes,
    exit_reason,
    kill_all,
    port_in_use,
    process,
    stack_processes,
    wait_gone,
)
from canary_kit.observe.rotation import EVERY, rotate_logs
from canary_kit.rollout import live
from canary_kit.stacks.backends import STACK_FILE, STACK_LOCK, backend_child, read_stack_file, retire
from canary_kit.stacks.local import Stack
from canary_kit.stacks.nginx import admin_socket, shadow_socket
from canary_kit.stacks.targets import LocalTarget
from canary_kit.steer.control import current, log_event, set_weight


@dataclass
class Watch:
    """What the supervisor knows of one component beyond stack.json."""

    up_since: float
    deaths: int = 0  # in a row: each within stable_seconds of its start
    due: float | None = None  # when the next start is due (monotonic); None while it runs
    gave_up: bool = False


def delay(settings: Settings, deaths: int) -> float:
    """Seconds before restarting after the `deaths`-th death in a row: 0, then restart_delay doubling to the max."""
    return 0.0 if deaths <= 1 else min(settings.restart_delay * 2 ** (deaths - 2), settings.restart_delay_max)


class Supervisor:
    def __init__(self, stack: Stack, report: Callable[[str], None]) -> None:
        self.stack, self.settings, self.report = stack, stack.settings, report
        self.owned: dict[str, Child] = {child.name: child for child in stack.children}
        self.watches: dict[str, Watch] = {}
        self.rotating: threading.Thread | None = None
        self.next_look = 0.0  # when the logs' sizes are looked at next (monotonic)

    def tick(self) -> None:
        """Look at every listed component once: note a death, start what is due."""
        now = time.monotonic()
        for child in self.owned.values():
            child.exit_code()  # reap our own, so that a dead one is not a zombie
        listed = read_stack_file(self.settings.state_dir)
        components = {"nginx": listed.get("nginx"), **listed.get("backends", {})}
        components = {name: entry for name, entry in components.items() if entry}
        for name in set(self.watches) - set(components):  # unlisted by deploy or finalize: not ours to restart
            del self.watches[name]
        for name, entry in components.items():
            watch = self.watches.setdefault(name, Watch(up_since=now))
            if watch.gave_up:
                continue
            if watch.due is None:
                if self.running(name, entry):
                    if watch.deaths and now - watch.up_since >= self.settings.stable_seconds:
                        watch.deaths = 0
                    continue
                self.died(name, entry, watch, now)
            if watch.due is not None and now >= watch.due:
                self.restart(name, watch)
        self.rollout_left()
        self.rotate(now, components.get("nginx"))

    def rotate(self, now: float, nginx: dict | None) -> None:
        """Every few seconds, logs past their size are rotated, in a thread: supervision never waits on it."""
        if now < self.next_look or (self.rotating is not None and self.rotating.is_alive()):
            return
        self.next_look = now + EVERY
        master = nginx.get("pid") if nginx and alive(nginx.get("pid"), nginx.get("started")) else None

        def run() -> None:
            try:
                for line in rotate_logs(self.settings, master):
                    self.report(line)
            except OSError as exc:  # a full disk, a file gone: tried again at the next look
                self.report(f"log rotation: {exc}")

        self.rotating = threading.Thread(target=run, name="log rotation", daemon=True)
        self.rotating.start()

    def rollout_left(self) -> None:
        """A rollout killed half-way (its process gone while it said `running`) cannot act: green back to 0%, a
        line in the change log, and the rollout closed as rolled back (or, if green cannot be moved, left
        interrupted: `canary status` shouts about it)."""
        data = live.orphaned(self.settings.state_dir)
        if data is None:
            return
        at = f"step {data.get('step')}/{len(data.get('steps') or [])}" if data.get("step") else "its start"
        why = f"the rollout of {data.get('started')} (pid {data.get('pid')}) ended without a word (killed?) at {at}"
        try:
            target = LocalTarget(self.settings.state_dir)
            weight = current(target).green_weight
            reason = f"{why}, green at {weight}%; the supervisor put green back to 0%"
            set_weight(target, 0, reason=reason, event="rollout")
            state = "rolled back"
            serial = current(target).serial
        except (CanaryError, OSError) as exc:
            state, reason, serial = "interrupted", f"{why}; green could not be put back to 0% ({exc})", None
            self.log("rollout", reason)
        try:
            final = 0 if state == "rolled back" else data.get("final_weight")
            live.close(self.settings.state_dir, data, state, reason, error=why, serial=serial, final_weight=final)
        except OSError:
            pass
        self.report(reason)

    def ours(self, name: str, entry: dict) -> Child | None:
        """The process this supervisor started for `name`, if it is still the one stack.json lists."""
        child = self.owned.get(name)
        return child if child is not None and child.proc is not None and child.pid == entry.get("pid") else None

    def running(self, name: str, entry: dict) -> bool:
        child = self.ours(name, entry)
        if child is not None:
            return child.exit_code() is None
        return alive(entry.get("pid"), entry.get("started"))

    def died(self, name: str, entry: dict, watch: Watch, now: float) -> None:
        ours = self.ours(name, entry)
        code = ours.exit_code() if ours else None
        reason = exit_reason(code) if ours else "stopped"
        if ours and code is not None and code > 0:
            reason += f", {ours.last_line()}"
        with locked(self.settings.state_dir / STACK_LOCK):
            if self.entry(name).get("pid") != entry.get("pid"):
                return  # replaced or unlisted meanwhile (deploy, finalize): theirs to handle
            left = stack_processes(self.settings.state_dir, name)
            described = describe_processes(left)
            # nginx's orphaned workers: SIGQUIT, so they close :8000 at once and finish the requests they hold
            kill_all(left, grace=1.0, first=signal.SIGQUIT) if name == "nginx" else kill_all(left)
            watch.deaths = watch.deaths + 1 if now - watch.up_since < self.settings.stable_seconds else 1
            reason = f"pid {entry.get('pid')} {reason}"
            if left:
                reason += f"; killed what it left running: {described}"
            watch.gave_up = watch.deaths > self.settings.restart_limit
            wait = delay(self.settings, watch.deaths)
            watch.due = None if watch.gave_up else now + wait
            state = (
                f"stopped: gave up after {watch.deaths - 1} restarts in a row"
                if watch.gave_up
                else f"restarting in {wait:.1f}s"
            )
            self.update(name, last_exit=reason, state=state, exited_at=time.time())
        self.report(f"{name} {reason}; {state}")
        self.log(
            "gave-up" if watch.gave_up else "exit",
            f"{self.label(name)} {reason}; {state}",
            component=name,
            deaths_in_a_row=watch.deaths,
            delay_s=None if watch.gave_up else wait,
        )

    def restart(self, name: str, watch: Watch) -> None:
        s = self.settings
        with locked(s.state_dir / STACK_LOCK):
            entry = self.entry(name)
            if not entry:
                self.watches.pop(name, None)
                return
            port = s.port if name == "nginx" else s.slot_port(name)
            host = s.host if name == "nginx" else "127.0.0.1"
            if port_in_use(host, port):  # not a death: wait (never spinning) until whoever holds it lets go
                watch.due = time.monotonic() + s.restart_delay
                state = f"waiting for port {port}, in use"
                if entry.get("state") != state:
                    self.update(name, state=state)
                    self.report(f"{name}: port {port} is in use; trying every {s.restart_delay:g}s")
                    self.log("port-in-use", f"{self.label(name)}: port {port} is in use", component=name)
                return
            if name == "nginx":
                for sock in (admin_socket(s), shadow_socket(s)):
                    sock.unlink(missing_ok=True)  # left by the dead master: the new one's bind() would fail
                child = self.stack.nginx_child()
            else:
                child = backend_child(s, name, entry["version"], die_with_parent=True)
            child.start()
            restarts = entry.get("restarts", 0) + 1
            self.update(
                name,
                pid=child.pid,
                started=created(child.pid),
                restarts=restarts,
                state="running",
            )
        self.owned[name] = child
        self.stack.children = [c for c in self.stack.children if c.name != name] + [child]
        watch.due, watch.up_since = None, time.monotonic()
        self.report(f"{name} restarted (pid {child.pid}, restart {restarts})")
        self.log(
            "restart",
            f"{self.label(name)} restarted as pid {child.pid} (restart {restarts})",
            component=name,
            restarts=restarts,
        )

    def entry(self, name: str) -> dict:
        listed = read_stack_file(self.settings.state_dir)
        return (listed.get("nginx") if name == "nginx" else listed.get("backends", {}).get(name)) or {}

    def update(self, name: str, **fields) -> None:
        """With STACK_LOCK held: change fields of a component's entry in stack.json."""
        listed = read_stack_file(self.settings.state_dir)
        entry = listed.get("nginx") if name == "nginx" else listed.get("backends", {}).get(name)
        if entry is None:
            return
        entry.update(fields)
        write_atomic(self.settings.state_dir / STACK_FILE, json.dumps(listed, indent=2) + "\n")

    def label(self, name: str) -> str:
        version = self.entry(name).get("version")
        return f"{name} {version}" if version else name

    def log(self, event: str, reason: str, **extra) -> None:
        """A line in the change log; one that cannot be written (a full disk) is reported, never stops supervision."""
        state = routing.current(self.settings.state_dir / routing.STATE_FILE)
        try:
            log_event(self.settings.state_dir, "local", event, state, state, reason, **extra)
        except OSError as exc:
            self.report(f"could not write to the change log ({exc.strerror or exc}): {reason}")


def supervise(stack: Stack, report: Callable[[str], None], every: float = 0.25) -> None:
    """Restart whatever of the started `stack` dies, checking every `every` s, until interrupted (KeyboardInterrupt
    or a stop signal: the caller stops the stack)."""
    supervisor = Supervisor(stack, report)
    while True:
        time.sleep(every)
        supervisor.tick()


def down(state_dir: Path, grace: float = 10.0) -> list[str]:
    """Stop the stack of `state_dir`: ask its supervisor to stop it if it runs, then stop every process of the
    stack still there (also when its supervisor was killed); returns what it did, one line each."""
    done = []
    listed = read_stack_file(state_dir)
    supervisor = listed.get("supervisor_pid")
    leader = process(supervisor, listed.get("supervisor_started")) if supervisor else None
    if leader is not None and leader.pid != os.getpid():
        leader.send_signal(signal.SIGTERM)
        if wait_gone([leader], 60):  # a zombie counts as gone: its parent, not us, reaps it
            leader.kill()
            done.append(f"canary up (pid {supervisor}) did not stop within 60s: killed it")
        else:
            done.append(f"stopped canary up (pid {supervisor}) and the processes it ran")
    if listed.get("settings"):
        settings = Settings(**listed["settings"])
        for slot in listed.get("backends", {}):
            before = describe_processes(stack_processes(state_dir, slot))
            retire(settings, slot)
            if before:
                done.append(f"stopped {slot}: {before}")
    left = stack_processes(state_dir)
    if left:
        done.append(f"stopped {describe_processes(left)}")
        kill_all(left, grace=grace)
    (state_dir / STACK_FILE).unlink(missing_ok=True)
    return done
