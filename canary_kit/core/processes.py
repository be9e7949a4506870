"""Processes the stack runs: each started in a session of its own, so that stopping it stops all it spawned, and
found again (by pid and start time, or by the port it listens on) by a later `canary` command. A child started
with `die_with_parent` gets SIGTERM from the kernel when the process that started it dies, even by SIGKILL
(PR_SET_PDEATHSIG): `bentoml serve` then stops its workers, and nginx its own.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil


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
    die_with_parent: bool = False  # the kernel sends it SIGTERM when the starting thread's process dies

    def start(self) -> None:
        """Start it, its output appended to its log (its owner's only); what it creates is its user's only too."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=0o077,
                preexec_fn=_dies_with(os.getpid()) if self.die_with_parent else None,
            )

    @property
    def pid(self) -> int:
        """The process's id, once started."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self.proc.pid

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def tree(self) -> list[psutil.Process]:
        """The process and all its descendants (bentoml's workers run in sessions of their own)."""
        if self.proc is None:
            return []
        try:
            leader = psutil.Process(self.proc.pid)
            return [leader, *leader.children(recursive=True)]
        except (psutil.NoSuchProcess, AttributeError):
            return []

    def stop(self, grace: float = 10.0) -> None:
        """Signal the process group to stop, then SIGKILL every process of the tree still there after `grace` s."""
        if self.proc is None or self.proc.poll() is not None:  # reaped: its pid may be another process's now
            return
        stop_tree(self.proc.pid, stop_signal=self.stop_signal, grace=grace)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        """SIGKILL the whole tree at once, as a crash would (used to test failover)."""
        for process in self.tree():
            process.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def last_line(self) -> str:
        """The log's last line, and where the log is: enough to say why it failed in one line."""
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            lines = []
        return f"last log line: {lines[-1].strip()[:200] if lines else '-'} (log: {self.log})"


PR_SET_PDEATHSIG = 1


def _dies_with(parent: int):
    """A preexec_fn: in the child, ask the kernel for SIGTERM when the parent dies (and check it has not already)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def arrange() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody will send the signal
            os.kill(os.getpid(), signal.SIGTERM)

    return arrange


def exit_reason(returncode: int | None) -> str:
    """How a process ended, in words: `exit code 1`, `killed by SIGKILL`."""
    if returncode is None:
        return "exited (code unknown: not our child)"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def process(pid: int | None, started: float | None = None) -> psutil.Process | None:
    """The running process `pid` (not a zombie); with `started`, only if it is the one that started then (a pid
    the system handed to another process since is not it)."""
    try:
        found = psutil.Process(pid) if pid else None
        if found is None or found.status() == psutil.STATUS_ZOMBIE:
            return None
        return found if started is None or abs(found.create_time() - started) < 0.05 else None
    except psutil.NoSuchProcess:
        return None


def created(pid: int) -> float | None:
    """When the running process `pid` started (what `process` compares), or None when it does not run."""
    found = process(pid)
    return found.create_time() if found else None


def alive(pid: int | None, started: float | None = None) -> bool:
    return process(pid, started) is not None


def _running(proc: psutil.Process) -> bool:
    """Still the same process (psutil checks its start time) and not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited (a zombie counts as exited: its parent may never reap it); return those
    still running."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if _running(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def stop_tree(pid: int, started: float | None = None, stop_signal: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Stop a process started in its own session and everything it spawned: signal the group, then SIGKILL what
    is still there after `grace` seconds. With `started`, nothing happens unless `pid` is still that process."""
    leader = process(pid, started)
    if leader is None:
        return
    try:
        tree = [leader, *leader.children(recursive=True)]  # taken first: orphans cannot be found later
        os.killpg(pid, stop_signal)
    except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
        tree = [leader]
        try:
            leader.send_signal(stop_signal)
        except psutil.NoSuchProcess:
            return
    for straggler in wait_gone(tree, grace):
        try:
            straggler.kill()
        except psutil.NoSuchProcess:
            pass
    wait_gone(tree, 5)


def listeners(port: int) -> list[psutil.Process]:
    """The processes listening on a loopback TCP port."""
    found = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            owner = process(conn.pid)
            if owner is not None:
                found.append(owner)
    return found


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


COMPONENT = "CANARY_COMPONENT"  # in a backend's environment: "<state folder>#<slot>"; its workers inherit it


def component_mark(state_dir: Path, name: str) -> str:
    return f"{state_dir}#{name}"


def marked(proc: psutil.Process, mark: str) -> bool:
    """Whether `proc` carries the kit's mark `mark` (COMPONENT in its environment): one of ours, not a stranger."""
    try:
        return proc.environ().get(COMPONENT) == mark
    except (psutil.Error, OSError):
        return False


def stack_processes(state_dir: Path, name: str | None = None) -> list[psutil.Process]:
    """Every running process of the stack whose state folder is `state_dir` (or of its component `name`), whoever
    its parent is now: a backend's processes carry COMPONENT in their environment (workers whose `bentoml serve`
    died included); nginx's master and workers hold the state folder's logs open (nginx overwrites its
    environment with its process titles, so it carries no readable mark)."""
    logs, mine = f"{state_dir / 'logs'}{os.sep}", os.getpid()
    wanted = None if name is None else component_mark(state_dir, name)
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.pid == mine:
            continue
        try:
            if proc.info["name"] == "nginx":
                if name in (None, "nginx") and any(f.path.startswith(logs) for f in proc.open_files()):
                    found.append(proc)
            elif name != "nginx":
                mark = proc.environ().get(COMPONENT, "")
                if mark == wanted or (wanted is None and mark.startswith(f"{state_dir}#")):
                    found.append(proc)
        except (psutil.Error, OSError):  # gone meanwhile, or not ours to read
            continue
    return [proc for proc in found if _running(proc)]


def kill_all(procs: list[psutil.Process], grace: float = 0.0, first: int = signal.SIGTERM) -> list[psutil.Process]:
    """Signal `first` then, after `grace` s, SIGKILL (at once when grace is 0) every process; returns them."""
    for proc in procs:
        try:
            proc.send_signal(first if grace else signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    for straggler in wait_gone(procs, grace) if grace else []:
        try:
            straggler.kill()
        except psutil.NoSuchProcess:
            pass
    left = wait_gone(procs, 5)
    return [proc for proc in procs if proc not in left]


def describe_processes(procs: list[psutil.Process]) -> str:
    """`nginx 123, 124; python3 130` : names and pids, for one line of output."""
    names: dict[str, list[str]] = {}
    for proc in procs:
        try:
            name = proc.name()
        except psutil.Error:
            name = "?"
        names.setdefault(name, []).append(str(proc.pid))
    return "; ".join(f"{name} {', '.join(pids)}" for name, pids in names.items())
