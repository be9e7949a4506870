"""The ledger of answers: every row each version answered on a prediction endpoint, and the labels sent back for
them later.

One SQLite file in the stack's state folder (`ledger.sqlite3`, WAL mode), fed from nginx's JSON access log: the
request id, the time, the version that answered, the route, whether the request was pinned, and each row's
prediction (a class, or a regressor's number) and confidence, as nginx read them in the answer (answers.py); and the
pinned requests to the model's endpoints (`canary status` counts them). Filling is incremental and idempotent: each
log file's position is kept, with the file's identity (logfiles.py), in the same transaction as the rows it added; a
row is keyed by (request id, row), reading the same log twice adds nothing, and a log rotated (`access.log.1`, ..),
truncated in place or replaced is followed without losing a line. Old answers are pruned by age and count (settings:
ledger_days, ledger_rows). Labels (`canary labels`) are joined to answers by (request id, row): a class for a
classifier (accuracy per version: `canary quality`, the accuracy gate), a true value for a regressor (MAE and RMSE:
`canary quality`, the error gate). The gates judge only answers that were not pinned: the split's traffic.
This module keeps the file and fills it; ledger_queries.py reads it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

from canary_kit.core import accesslog, logfiles
from canary_kit.core.endpoints import ENDPOINT, asks_endpoint
from canary_kit.core.errors import CanaryError
from canary_kit.core.files import PRIVATE
from canary_kit.core.retention import Retention
from canary_kit.core.target import LogMark, Target
from canary_kit.observe.answers import predictions

LEDGER = "ledger.sqlite3"
BATCH = 50_000  # rows per executemany while ingesting
BUSY_WAIT = 30.0  # seconds a write waits for another command's write lock
READ_WAIT = 1.0  # `canary status` and the dashboard: catch up if the ledger is free, else show what it holds
CHUNK_LINES = 20_000  # log lines per ingest transaction: the write lock is held briefly, then let go
CHUNK_SECONDS = 0.5  # and at most this long per transaction
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    request_id TEXT NOT NULL, row INTEGER NOT NULL, time TEXT NOT NULL, version TEXT NOT NULL, route TEXT,
    predicted TEXT NOT NULL, value REAL, confidence REAL, PRIMARY KEY (request_id, row)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answers_by_time ON answers (time);
CREATE TABLE IF NOT EXISTS labels (
    request_id TEXT NOT NULL, row INTEGER NOT NULL, label TEXT NOT NULL, received TEXT NOT NULL,
    PRIMARY KEY (request_id, row)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sources (name TEXT PRIMARY KEY, inode INTEGER, offset INTEGER, mark TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
PINS = """
CREATE TABLE IF NOT EXISTS pins (
    request_id TEXT PRIMARY KEY, time TEXT NOT NULL, version TEXT, pin TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pins_by_time ON pins (time);
"""


@lru_cache(maxsize=4096)  # nginx logs whole seconds: consecutive lines share their time
def utc(text: str) -> str | None:
    """An ISO time as UTC 'YYYY-MM-DDTHH:MM:SS' (the ledger's comparable form); None if it is not one."""
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    except (TypeError, ValueError, OverflowError):
        return None


def answer_rows(entry: dict, endpoints: tuple[str, ...] = (ENDPOINT,), task: str = "classification") -> list[tuple]:
    """The ledger rows of one access-log entry: a live answer of a prediction endpoint, 200 with its predictions,
    one per row."""
    if entry.get("shadow") or entry.get("status") != 200 or not asks_endpoint(entry, endpoints):
        return []
    version, rid, when = entry.get("version"), entry.get("request_id"), utc(entry.get("time", ""))
    rows = predictions(entry, task)
    if not (rows and version and rid and when):
        return []
    route, pinned = entry.get("route") or None, 1 if entry.get("pin") else 0
    return [(rid, i, when, version, route, r.predicted, r.value, r.confidence, pinned) for i, r in enumerate(rows)]


def pin_row(entry: dict, endpoints: tuple[str, ...] = (ENDPOINT,)) -> tuple | None:
    """The pins row of one access-log entry: a live request to a prediction endpoint that asked for a version."""
    pin, rid, when = entry.get("pin"), entry.get("request_id"), utc(entry.get("time", ""))
    if entry.get("shadow") or pin not in ("green", "blue") or not (rid and when) or not asks_endpoint(entry, endpoints):
        return None
    return (rid, when, entry.get("version") or None, pin)


class LedgerBusy(CanaryError):
    """Another command has held the ledger's write lock for longer than this one waits."""


def _refusal(path: Path, exc: sqlite3.Error, wait: float) -> CanaryError:
    """An SQLite error as one line: busy (another writer), full, or what SQLite says."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return LedgerBusy(
            f"the ledger {path} is busy: another command has held its write lock for more than {wait:g}s; try again"
        )
    return CanaryError(f"the ledger {path}: {text}")


@contextmanager
def connect(folder: Path, wait: float = BUSY_WAIT):
    """The ledger of a state folder, created on first use (its owner's only: SQLite gives its WAL the same mode).
    A write waits up to `wait` s for another command's; any SQLite error is a CanaryError, one line."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LEDGER
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE))
        conn = sqlite3.connect(path, timeout=wait, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise CanaryError(f"cannot open the ledger {path}: {exc}") from None
    with closing(conn):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-65536")  # 64 MiB of pages: inserts by random request id stay in memory
            if conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0] == 0:
                conn.executescript(SCHEMA)  # a write: only where the tables are missing, so a reader never waits
            columns = {row[1] for row in conn.execute("PRAGMA table_info(answers)")}
            # a ledger from before regressors, confidences and pins were kept
            for column, kind in (("value", "REAL"), ("confidence", "REAL"), ("pinned", "INTEGER")):
                if column not in columns:
                    conn.execute(f"ALTER TABLE answers ADD COLUMN {column} {kind}")
            if conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'pins'").fetchone()[0] == 0:
                conn.executescript(PINS)
            yield conn
        except sqlite3.Error as exc:
            raise _refusal(path, exc, wait) from None


@contextmanager
def transaction(conn: sqlite3.Connection):
    """One transaction: all of it or, on any error (or Ctrl-C), none of it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _insert(conn: sqlite3.Connection, rows: list[tuple], pins: list[tuple] | None = None) -> int:
    rows.sort()  # in key order: each page of the index is visited once per batch
    before = conn.total_changes
    conn.executemany(
        "INSERT OR IGNORE INTO answers (request_id, row, time, version, route, predicted, value, confidence, pinned) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    added = conn.total_changes - before
    if pins:
        conn.executemany("INSERT OR IGNORE INTO pins (request_id, time, version, pin) VALUES (?, ?, ?, ?)", pins)
    return added


def ingest_file(
    conn: sqlite3.Connection,
    log: Path,
    name: str = "access.log",
    endpoints: tuple[str, ...] = (ENDPOINT,),
    task: str = "classification",
) -> int:
    """Add what `log` and its rotated files (logfiles.family) hold beyond the position kept for each, by the file's
    identity (a file never seen: from its start). Returns the rows added."""
    kept = dict(conn.execute("SELECT name, offset FROM sources WHERE name LIKE ?", (f"{name}@%",)).fetchall())
    legacy = conn.execute("SELECT inode, offset FROM sources WHERE name = ?", (name,)).fetchone()  # inode and offset
    added, seen = 0, set()
    for path in logfiles.family(log):
        ident = logfiles.identity(path)
        if ident is None:
            continue  # no whole line yet
        key = f"{name}@{ident}"
        seen.add(key)
        start = kept.get(key)
        if start is None and legacy is not None and legacy[0] == path.stat().st_ino:
            start = legacy[1]  # where an older ledger, which kept the inode only, stood in this file
        start = start if start is not None and start <= path.stat().st_size else 0
        position = kept.get(key)
        more = True
        while more:  # one bounded transaction at a time: a change or another reader never waits long
            with transaction(conn):
                chunk, start, more = _read_chunk(conn, path, start, endpoints, task)
                added += chunk
                if position != start:  # nothing read, nothing written: a refused label file leaves no trace
                    conn.execute("INSERT OR REPLACE INTO sources (name, offset) VALUES (?, ?)", (key, start))
            position = start
    gone = [key for key in kept if key not in seen]
    if gone or (legacy is not None and seen):
        with transaction(conn):  # positions in files that are no more, and the older ledger's one
            conn.executemany("DELETE FROM sources WHERE name = ?", [(key,) for key in gone])
            if seen:
                conn.execute("DELETE FROM sources WHERE name = ?", (name,))
    return added


def _read_chunk(
    conn: sqlite3.Connection, path: Path, start: int, endpoints: tuple[str, ...], task: str
) -> tuple[int, int, bool]:
    """The answers (and pinned requests) of at most CHUNK_LINES lines of `path` from `start`, read for at most
    CHUNK_SECONDS, inserted in the caller's transaction. Returns the rows added, where it stopped, and whether lines
    are left."""
    added, end, more = 0, start, False
    deadline, lines = time.monotonic() + CHUNK_SECONDS, 0
    joiner = accesslog.Joiner()
    with open(path, "rb") as handle:
        handle.seek(start)
        rows: list[tuple] = []
        pins: list[tuple] = []
        for line in handle:
            if not line.endswith(b"\n"):
                break  # a line nginx is still writing: next time
            at, end = end, end + len(line)
            lines += 1
            if line.startswith(b"P "):  # a live answer's predictions, for the entry that follows
                joiner.feed(line.decode("utf-8", "replace"), at)
                continue
            pinned = b'"pin":"green"' in line or b'"pin":"blue"' in line
            if b'"shadow":false' in line and (b'"status":200' in line or pinned):
                entry = joiner.feed(line.decode("utf-8", "replace"), at)
                if isinstance(entry, dict):
                    rows.extend(answer_rows(entry, endpoints, task))
                    found = pin_row(entry, endpoints) if pinned else None
                    pins += [found] if found else []
                if len(rows) >= BATCH:
                    added += _insert(conn, rows, pins)
                    rows, pins = [], []
            if lines >= CHUNK_LINES or (lines % 1000 == 0 and time.monotonic() > deadline):
                more = True
                break
        added += _insert(conn, rows, pins)
    waiting = joiner.held_back()  # predictions whose entry nginx is writing: read again from them next time
    if waiting is not None and (waiting > start or not more):  # (a cut chunk always moves on)
        end = waiting
    return added, end, more


def ingest_entries(
    conn: sqlite3.Connection,
    entries: list[dict],
    mark: str,
    name: str = "compose",
    endpoints: tuple[str, ...] = (ENDPOINT,),
    task: str = "classification",
) -> int:
    """Add parsed log entries (compose's nginx logs to stdout) and keep `mark` as where to read from next."""
    pins = [found for entry in entries if (found := pin_row(entry, endpoints))]
    with transaction(conn):
        added = _insert(conn, [row for entry in entries for row in answer_rows(entry, endpoints, task)], pins)
        conn.execute("INSERT OR REPLACE INTO sources (name, mark) VALUES (?, ?)", (name, mark))
    return added


def prune(conn: sqlite3.Connection, retention: Retention, now: datetime | None = None) -> int:
    """Drop answers older than `retention.days`, then the oldest beyond `retention.rows`, and their labels."""
    cutoff = ((now or datetime.now(UTC)) - timedelta(days=retention.days)).strftime("%Y-%m-%dT%H:%M:%S")
    with transaction(conn):
        before = conn.total_changes
        conn.execute("DELETE FROM answers WHERE time < ?", (cutoff,))
        edge = conn.execute(
            "SELECT time FROM answers ORDER BY time DESC LIMIT 1 OFFSET ?", (retention.rows - 1,)
        ).fetchone()
        if edge is not None:  # older than the newest `rows` (a second's answers all stay: nginx logs whole seconds)
            conn.execute("DELETE FROM answers WHERE time < ?", edge)
        dropped = conn.total_changes - before
        conn.execute("DELETE FROM pins WHERE time < ?", (cutoff,))  # pinned requests: as long, and as many
        edge = conn.execute("SELECT time FROM pins ORDER BY time DESC LIMIT 1 OFFSET ?", (retention.rows - 1,))
        conn.execute("DELETE FROM pins WHERE time < ?", edge.fetchone() or ("",))
        if dropped:
            conn.execute(
                "DELETE FROM labels WHERE NOT EXISTS (SELECT 1 FROM answers a WHERE "
                "a.request_id = labels.request_id AND a.row = labels.row)"
            )
    return dropped


PRUNE_EVERY = 60.0  # seconds: pruning walks the time index, so it runs after new answers, at most this often


def catch_up(target: Target, conn: sqlite3.Connection, retention: Retention | None = None) -> int:
    """Bring the ledger up to date with the target's nginx log (the model's endpoints of its settings); returns
    the rows added. Old answers are pruned after new ones came in, at most once a minute."""
    log = target.access_log
    endpoints, task = tuple(target.prediction_metrics.endpoints), target.prediction_metrics.task
    changes = conn.total_changes
    if log is not None:
        added = ingest_file(conn, log, endpoints=endpoints, task=task)
    else:
        kept = conn.execute("SELECT mark FROM sources WHERE name = 'compose'").fetchone()
        mark = target.log_mark()
        since = LogMark(time=kept[0]) if kept and kept[0] else LogMark()
        added = ingest_entries(conn, target.log_since(since), mark.time, endpoints=endpoints, task=task)
    last = conn.execute("SELECT value FROM meta WHERE key = 'pruned_at'").fetchone()
    grew = conn.total_changes > changes  # answers or pinned requests came in
    if grew and (last is None or time.time() - float(last[0]) >= PRUNE_EVERY):
        prune(conn, retention or Retention())
        with transaction(conn):
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('pruned_at', ?)", (str(time.time()),))
    return added
