"""The stack's log files (logs/ in the state folder): rotated by size, and followed through rotation by readers.

Rotation: NAME becomes NAME.1, NAME.1 becomes NAME.2, and so on up to `keep` rotated files (the oldest goes). A log
that nginx writes (its access and error logs) is renamed, a fresh empty one is put in its place with the same mode,
and nginx is told to reopen its logs (SIGUSR1 to its master: the master reopens them and, running as root, gives
them to the workers' user; the workers then reopen them too). A log a process holds open as its output (a backend's,
nginx's own stderr) is copied to NAME.1 and truncated in place: its writer appends, so it goes on at the new end (a
line written between the copy and the truncation is lost: these logs are for people, not for the ledger).

Following: a reader keeps, for each file it read, the file's identity and how far it read. The identity is a hash of
the file's first line, which in nginx's access log holds a time and a random request id: no two logs share it,
whatever inode number the file system hands out again, and a log truncated in place gets a new one with its next
first line. Reading the family (NAME.k .. NAME.1, NAME) from where the reader left each file, and any file it never
saw from its start, loses no line through a rotation, a truncation or a restart.

    for path in family(log):                  # oldest first
        ident = identity(path)                # None: no whole first line yet (nothing to read)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

FIRST_LINE = 4096  # bytes of a file's start that its identity is taken from (its first line, or these bytes)
MAX_ROTATED = 1000  # rotated files looked for (NAME.1 ..): far more than any `keep`


def identity(path: Path) -> str | None:
    """The identity of a log file: a hash of its first line; None when it has no whole first line yet (or is gone)."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(FIRST_LINE)
    except OSError:
        return None
    end = start.find(b"\n")
    if end < 0 and len(start) < FIRST_LINE:
        return None
    first = start if end < 0 else start[: end + 1]
    return hashlib.sha256(first).hexdigest()[:32]


def rotated(log: Path, number: int) -> Path:
    return log.with_name(f"{log.name}.{number}")


def family(log: Path) -> list[Path]:
    """The log and its rotated files that exist, oldest first (NAME.k, ..., NAME.1, NAME)."""
    found = []
    for number in range(1, MAX_ROTATED + 1):
        path = rotated(log, number)
        if not path.exists():
            break
        found.append(path)
    return [*reversed(found), *([log] if log.exists() else [])]


def too_big(log: Path, max_bytes: int) -> bool:
    try:
        return log.stat().st_size > max_bytes
    except OSError:
        return False


def _shift(log: Path, keep: int) -> None:
    """Make room for a new NAME.1: NAME.k goes to NAME.k+1; what would be past `keep` is deleted."""
    for number in range(MAX_ROTATED, 0, -1):
        path = rotated(log, number)
        if not path.exists():
            continue
        if number >= keep:
            path.unlink()
        else:
            path.rename(rotated(log, number + 1))


def rotate_reopened(log: Path, keep: int, reopen: Callable[[], None]) -> Path:
    """Rotate a log its writer reopens by name (nginx): rename it to NAME.1, put an empty file of the same mode and
    owner in its place, then `reopen` (tell the writer). Returns NAME.1."""
    found = log.stat()
    _shift(log, keep)
    log.rename(rotated(log, 1))
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(found.st_mode))
    try:
        os.fchmod(fd, stat.S_IMODE(found.st_mode))  # whatever the umask took away
        if os.geteuid() == 0:
            os.fchown(fd, found.st_uid, found.st_gid)
    finally:
        os.close(fd)
    reopen()
    return rotated(log, 1)


def rotate_copied(log: Path, keep: int) -> Path:
    """Rotate a log its writer holds open and appends to (a process's output): copy it to NAME.1, then truncate it
    in place. Returns NAME.1."""
    _shift(log, keep)
    target = rotated(log, 1)
    with open(log, "rb") as source, open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        shutil.copyfileobj(source, out)
        while more := source.read(1 << 20):  # what was appended meanwhile, until the copy catches up
            out.write(more)
    os.truncate(log, 0)
    return target
