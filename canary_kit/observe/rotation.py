"""The local stack's logs rotated by size, as `canary up`'s supervisor runs it (every few seconds, in a thread of its
own): a log past `log_max_bytes` becomes NAME.1, and `log_keep` rotated files are kept (logfiles.py).

nginx's access and error logs are renamed and nginx reopens them (SIGUSR1 to its master). Before the access log is
rotated, the ledger (when there is one) reads it to its end: the oldest rotated file can then go without an answer
the ledger has not read, however rarely a command reads the ledger. A busy ledger puts the rotation off to the next
look. The processes' outputs (nginx's own, each backend's) are copied and truncated in place.

    rotate_logs(settings, master_pid=nginx_pid)   # -> what it rotated, one line each
"""

from __future__ import annotations

import os
import signal

from canary_kit.core import logfiles
from canary_kit.core.config import Settings
from canary_kit.core.errors import CanaryError
from canary_kit.observe.ledger import LEDGER, READ_WAIT, connect, ingest_file

REOPENED = ("access.log", "nginx-error.log")  # nginx opens these by name: it reopens them on SIGUSR1
HELD = ("nginx.log", "blue.log", "green_a.log", "green_b.log")  # a process's output, held open: copied, truncated
EVERY = 2.0  # seconds between two looks at the logs' sizes


def rotate_logs(settings: Settings, master_pid: int | None) -> list[str]:
    """Rotate each of the stack's logs past its size; returns what was done (or put off), one line each."""
    logs = settings.state_dir / "logs"
    done = []
    for name in REOPENED:
        log = logs / name
        if not logfiles.too_big(log, settings.log_max_bytes):
            continue
        if name == "access.log" and not _ledger_read(settings):
            done.append(f"{log} is past {settings.log_max_bytes} bytes; the ledger is busy: rotated at a next look")
            continue
        logfiles.rotate_reopened(log, settings.log_keep, lambda: _reopen(master_pid))
        done.append(f"rotated {log} (nginx reopened it)")
    for name in HELD:
        log = logs / name
        if logfiles.too_big(log, settings.log_max_bytes):
            logfiles.rotate_copied(log, settings.log_keep)
            done.append(f"rotated {log}")
    return done


def _ledger_read(settings: Settings) -> bool:
    """The ledger, if there is one, has read nginx's access log to its end; False when it is busy."""
    if not (settings.state_dir / LEDGER).is_file():
        return True
    try:
        with connect(settings.state_dir, wait=READ_WAIT) as conn:
            ingest_file(
                conn,
                settings.state_dir / "logs" / "access.log",
                endpoints=tuple(settings.endpoints),
                task=settings.task,
            )
    except CanaryError:
        return False
    return True


def _reopen(master_pid: int | None) -> None:
    """Ask nginx to reopen its logs (nothing to ask when it does not run: it opens them by name when it starts)."""
    if master_pid is None:
        return
    try:
        os.kill(master_pid, signal.SIGUSR1)
    except ProcessLookupError:
        pass
