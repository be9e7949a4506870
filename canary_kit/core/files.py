"""Files that readers must see whole, and that survive a crash: written to a temporary file in the same folder,
renamed into place, then the folder synced; lines appended and synced, or not at all; a lock for files that several
processes update; and the state folder kept private (created 0700, refused when someone else could change it, as
ssh does for ~/.ssh)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

PRIVATE = 0o600  # a new file: its owner only


def sync_folder(folder: Path) -> None:
    """Make the folder's entries (a rename, a new file) durable: without it a crash can undo a rename."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str, mode: int | None = None, group: int | None = None) -> None:
    """Write through a temporary file in the same folder, rename it, sync the folder: readers see the old or the
    new file, and after a crash the folder holds one of them whole. An existing file keeps its permissions and group
    (unless `mode` or `group` is given); a new one gets `mode`, else PRIVATE. A symbolic link keeps pointing where
    it did."""
    path = path.resolve() if path.is_symlink() else path
    old = path.stat() if path.exists() else None
    mode = mode if mode is not None else stat.S_IMODE(old.st_mode) if old else PRIVATE
    group = group if group is not None else old.st_gid if old else None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if group is not None and group != os.stat(tmp).st_gid:
            try:
                os.chown(tmp, -1, group)  # e.g. the routing state, readable by nginx's workers' group
            except PermissionError:
                pass
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def append_line(path: Path, line: str, mode: int = PRIVATE) -> tuple[int, int]:
    """Append one line and sync it to disk, or raise and leave the file as it was (a full disk leaves no half
    line behind: the file is cut back to its old end). Returns where the line starts and ends in the file."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one writer at a time: the end we may cut back to is ours
        end = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                n = os.write(fd, data[written:])
                if n == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                written += n
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, end)
            os.fsync(fd)
            raise
        if end == 0:
            sync_folder(path.parent)  # a new file: its name must survive a crash too
        return end, end + len(data)
    finally:
        os.close(fd)  # and its lock


def take_back(path: Path, span: tuple[int, int]) -> bool:
    """Undo an append (`span`, from append_line) that a later step could not follow: cut the file back to where
    the line started, if it is still the last one. Returns whether it was taken back."""
    fd = os.open(path, os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size != span[1]:
            return False  # another line came after it
        os.ftruncate(fd, span[0])
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


@contextmanager
def locked(path: Path):
    """Hold an exclusive lock on `path` (created if missing): one read-modify-write of a shared file at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE)
    with open(fd, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class UnsafeFolder(PermissionError):
    """A state folder that someone other than its user could change: refused, never used."""


def private_folder(folder: Path, group: int | None = None) -> Path:
    """Create `folder` 0700 if missing; refuse it when it is owned by someone else, or writable by its group or by
    others; then make it 0700, or 0710 with `group` (nginx's workers, running as another user, go through it to
    the routing state and their temporary files, and read nothing else). Returns the folder."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_folder(folder)
    share(folder, group, 0o710)
    return folder


def check_folder(folder: Path) -> None:
    """Refuse (UnsafeFolder, one line) a folder owned by someone else, or writable by its group or by others."""
    found = folder.stat()  # a symbolic link: the folder it names, as ssh judges ~/.ssh
    if found.st_uid != os.geteuid():
        raise UnsafeFolder(
            f"the state folder {folder} belongs to uid {found.st_uid}, not to you (uid {os.geteuid()}): "
            "use a folder of your own"
        )
    if found.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFolder(
            f"the state folder {folder} is writable by {'others' if found.st_mode & stat.S_IWOTH else 'its group'} "
            f"(mode {stat.S_IMODE(found.st_mode):o}): `chmod 700 {folder}` if you trust what is in it"
        )


def share(path: Path, group: int | None, shared_mode: int, private_mode: int = 0o700) -> None:
    """Give `path` to `group` with `shared_mode`; without a group, `private_mode` (its owner only)."""
    if group is not None and path.stat().st_gid != group:
        os.chown(path, -1, group)
    os.chmod(path, shared_mode if group is not None else private_mode)
