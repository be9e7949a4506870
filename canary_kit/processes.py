"""Processes the stack runs: each started in a session of its own, so that stopping it stops all it spawned, and
found again (by pid and start time, or by the port it listens on) by a later `canary` command.
"""

from __future__ import annotations

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
        self.proc.wait(timeout=10)

    def last_line(self) -> str:
        """The log's last line, and where the log is: enough to say why it failed in one line."""
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            lines = []
        return f"last log line: {lines[-1].strip()[:200] if lines else '-'} (log: {self.log})"


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


def alive(pid: int | None, started: float | None = None) -> bool:
    return process(pid, started) is not None


def _running(proc: psutil.Process) -> bool:
    """Still the same process (psutil checks its start time) and not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
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
    for straggler in _gone(tree, grace):
        try:
            straggler.kill()
        except psutil.NoSuchProcess:
            pass
    _gone(tree, 5)


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
