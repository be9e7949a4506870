"""The ledger of answers: every row each version answered on a prediction endpoint, and the labels sent back for
them later.

One SQLite file in the stack's state folder (`ledger.sqlite3`, WAL mode), fed from nginx's JSON access log: the
request id, the time, the version that answered, the route, and each row's prediction (a class, or a regressor's
number) and confidence, as nginx read them in the answer (answers.py). Filling is incremental and idempotent: the
log position is kept in the same transaction as the rows it added, a row is keyed by (request id, row), reading the
same log twice adds nothing, and a rotated log (`access.log.1`, or a log truncated by a restart) is followed. Old
answers are pruned by age and count (settings: ledger_days, ledger_rows). Labels (`canary labels`) are joined to
answers by (request id, row): a class for a classifier (accuracy per version: `canary quality`, the accuracy gate),
a true value for a regressor (MAE and RMSE: `canary quality`, the error gate).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

from canary_kit.answers import predictions
from canary_kit.config import CanaryError
from canary_kit.files import PRIVATE
from canary_kit.metrics import ENDPOINT, asks_endpoint
from canary_kit.retention import Retention
from canary_kit.stats import Errors
from canary_kit.target import LogMark, Target

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
    route = entry.get("route") or None
    return [(rid, i, when, version, route, r.predicted, r.value, r.confidence) for i, r in enumerate(rows)]


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
            for column in ("value", "confidence"):  # a ledger from before regressors and confidences were kept
                if column not in columns:
                    conn.execute(f"ALTER TABLE answers ADD COLUMN {column} REAL")
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


def _insert(conn: sqlite3.Connection, rows: list[tuple]) -> int:
    rows.sort()  # in key order: each page of the index is visited once per batch
    before = conn.total_changes
    conn.executemany(
        "INSERT OR IGNORE INTO answers (request_id, row, time, version, route, predicted, value, confidence) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    return conn.total_changes - before


def ingest_file(
    conn: sqlite3.Connection,
    log: Path,
    name: str = "access.log",
    endpoints: tuple[str, ...] = (ENDPOINT,),
    task: str = "classification",
) -> int:
    """Add what `log` holds beyond the position kept for it (and, if it was rotated, the rest of `log`.1 first).
    Returns the rows added."""
    kept = conn.execute("SELECT inode, offset FROM sources WHERE name = ?", (name,)).fetchone()
    if not log.exists():
        return 0
    stat = log.stat()
    parts: list[tuple[Path, int]] = []
    offset = 0
    if kept is not None:
        inode, at = kept
        rotated = log.with_name(log.name + ".1")
        if inode == stat.st_ino and at <= stat.st_size:
            offset = at
        elif inode != stat.st_ino and rotated.exists() and rotated.stat().st_ino == inode:
            parts.append((rotated, at))  # the end of the rotated log, which was not read yet
    parts.append((log, offset))
    added = 0
    position = None if kept is None else (kept[0], kept[1])
    for path, start in parts:
        inode = stat.st_ino if path == log else kept[0]  # the rotated part: the inode kept for it
        more = True
        while more:  # one bounded transaction at a time: a change or another reader never waits long
            with transaction(conn):
                chunk, start, more = _read_chunk(conn, path, start, endpoints, task)
                added += chunk
                if position != (inode, start):  # nothing read, nothing written: a refused label file leaves no trace
                    conn.execute(
                        "INSERT OR REPLACE INTO sources (name, inode, offset) VALUES (?, ?, ?)", (name, inode, start)
                    )
            position = (inode, start)
    return added


def _read_chunk(
    conn: sqlite3.Connection, path: Path, start: int, endpoints: tuple[str, ...], task: str
) -> tuple[int, int, bool]:
    """The answers of at most CHUNK_LINES lines of `path` from `start`, read for at most CHUNK_SECONDS, inserted in
    the caller's transaction. Returns the rows added, where it stopped, and whether lines are left."""
    added, end, more = 0, start, False
    deadline, lines = time.monotonic() + CHUNK_SECONDS, 0
    with open(path, "rb") as handle:
        handle.seek(start)
        rows: list[tuple] = []
        for line in handle:
            if not line.endswith(b"\n"):
                break  # a line nginx is still writing: next time
            end += len(line)
            lines += 1
            if b'"shadow":false' in line and b'"status":200' in line:
                try:
                    entry = json.loads(line.decode("utf-8", "replace"))
                except ValueError:
                    entry = None
                rows.extend(answer_rows(entry, endpoints, task) if isinstance(entry, dict) else [])
                if len(rows) >= BATCH:
                    added += _insert(conn, rows)
                    rows = []
            if lines >= CHUNK_LINES or (lines % 1000 == 0 and time.monotonic() > deadline):
                more = True
                break
        added += _insert(conn, rows)
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
    with transaction(conn):
        added = _insert(conn, [row for entry in entries for row in answer_rows(entry, endpoints, task)])
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
    if log is not None:
        added = ingest_file(conn, log, endpoints=endpoints, task=task)
    else:
        kept = conn.execute("SELECT mark FROM sources WHERE name = 'compose'").fetchone()
        mark = target.log_mark()
        since = LogMark(time=kept[0]) if kept and kept[0] else LogMark()
        added = ingest_entries(conn, target.log_since(since), mark.time, endpoints=endpoints, task=task)
    last = conn.execute("SELECT value FROM meta WHERE key = 'pruned_at'").fetchone()
    if added and (last is None or time.time() - float(last[0]) >= PRUNE_EVERY):
        prune(conn, retention or Retention())
        with transaction(conn):
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('pruned_at', ?)", (str(time.time()),))
    return added


# --- reading -------------------------------------------------------------------------------------------------


@dataclass
class VersionQuality:
    """One version's labelled answers: how many, how many right, and label -> predicted -> rows."""

    version: str
    labelled: int = 0
    correct: int = 0
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


def quality(conn: sqlite3.Connection, versions: list[str], since: str | None = None) -> dict[str, VersionQuality]:
    """Per version, its answers since `since` (UTC 'YYYY-MM-DDTHH:MM:SS') that have a label."""
    out = {v: VersionQuality(v) for v in versions}
    # From the labels (far fewer than answers) to their answers by key: CROSS JOIN keeps SQLite to that order.
    query = (
        "SELECT a.version, l.label, a.predicted, COUNT(*) FROM labels l CROSS JOIN answers a "
        "ON a.request_id = l.request_id AND a.row = l.row WHERE a.time >= ? GROUP BY 1, 2, 3"
    )
    for version, label, predicted, n in conn.execute(query, (since or "",)):
        if version not in out:
            continue
        q = out[version]
        q.labelled += n
        q.correct += n if label == predicted else 0
        q.confusion.setdefault(label, {})[predicted] = n
    return out


def errors(conn: sqlite3.Connection, versions: list[str], since: str | None = None) -> dict[str, Errors]:
    """Per version, a regressor's errors (label - prediction) on its answers since `since` that have a label."""
    query = (
        "SELECT version, COUNT(*), SUM(ABS(e)), SUM(e * e), SUM(e * e * e * e) FROM ("
        "SELECT a.version AS version, CAST(l.label AS REAL) - a.value AS e FROM labels l CROSS JOIN answers a "
        "ON a.request_id = l.request_id AND a.row = l.row WHERE a.time >= ? AND a.value IS NOT NULL) GROUP BY 1"
    )
    found = {v: Errors(n, a, s2, s4) for v, n, a, s2, s4 in conn.execute(query, (since or "",))}
    return {v: found.get(v, Errors()) for v in versions} | {v: e for v, e in found.items() if v not in versions}


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    answers = conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    labels = conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
    return {"answers": answers, "labels": labels}


def known_classes(conn: sqlite3.Connection) -> set[str]:
    row = conn.execute("SELECT value FROM meta WHERE key = 'classes'").fetchone()
    return set(json.loads(row[0])) if row else set()


def remember_classes(conn: sqlite3.Connection, classes: set[str]) -> None:
    if classes and classes != known_classes(conn):
        with transaction(conn):
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('classes', ?)", (json.dumps(sorted(classes)),))


def labelled_since(target: Target, versions: dict[str, str | None], since: str) -> dict[str, tuple[int, int]]:
    """colour -> (labelled rows, correct rows) of the answers each version gave since `since` (the rollout's
    start), with the ledger brought up to date first."""
    with connect(target.state_dir) as conn:
        catch_up(target, conn, target.retention)
        found = quality(conn, [v for v in versions.values() if v], since)
    return {colour: (found[v].labelled, found[v].correct) if v in found else (0, 0) for colour, v in versions.items()}


def errors_since(target: Target, versions: dict[str, str | None], since: str) -> dict[str, Errors]:
    """colour -> a regressor's errors on the labelled answers each version gave since `since` (the rollout's
    start), with the ledger brought up to date first."""
    with connect(target.state_dir) as conn:
        catch_up(target, conn, target.retention)
        found = errors(conn, [v for v in versions.values() if v], since)
    return {colour: found.get(v, Errors()) if v else Errors() for colour, v in versions.items()}


def model_classes(target: Target, conn: sqlite3.Connection) -> set[str]:
    """The model's classes: what its backends export in the class metric (every class, from the start), else what
    the ledger learnt before."""
    from canary_kit.scrape import snapshots

    found = {name for snap in snapshots(target).values() if snap for name in snap.get("classes", {})}
    remember_classes(conn, found)
    return found or known_classes(conn)


def accuracy_by_version(target: Target, versions: dict[str, str | None]) -> dict[str, dict] | None:
    """colour -> labelled rows and accuracy (a classifier) or MAE (a regressor) of all that version's answers, for
    `canary status`; None while the stack has no ledger yet (nobody sent labels)."""
    if not (target.state_dir / LEDGER).is_file():
        return None
    listed = [v for v in versions.values() if v]
    try:
        with connect(target.state_dir, wait=READ_WAIT) as conn:
            try:
                catch_up(target, conn, target.retention)
            except CanaryError:
                pass  # another command writes, or the disk is full: the answers it has (status never waits)
            if target.prediction_metrics.task == "regression":
                found_errors = errors(conn, listed)
                return {
                    colour: {"version": v, "labelled": found_errors[v].n, "mae": found_errors[v].mae}
                    for colour, v in versions.items()
                    if v and found_errors[v].n
                }
            found = quality(conn, listed)
    except CanaryError:  # busy, or a full disk: status shows the rest
        return None
    return {
        colour: {"version": v, "labelled": found[v].labelled, "accuracy": found[v].accuracy}
        for colour, v in versions.items()
        if v and found[v].labelled
    }


RECENT = 5000  # a regressor's newest predicted values per version that `canary status` compares


def observed_since(target: Target, versions: dict[str, str | None], since: str | None) -> dict[str, dict]:
    """colour -> what its version's answers since `since` predicted, from the ledger brought up to date: a
    classifier's rows per class and mean confidence, a regressor's rows, mean and spread (and its newest values).
    For `canary status`, which never waits on the ledger: busy or full, it reads what the ledger holds, or nothing."""
    try:
        with connect(target.state_dir, wait=READ_WAIT) as conn:
            try:
                catch_up(target, conn, target.retention)
            except CanaryError:
                pass  # another command writes, or the disk is full: the answers it has
            return _observed(conn, target, versions, since)
    except CanaryError:
        return {}


def _observed(conn: sqlite3.Connection, target: Target, versions: dict[str, str | None], since: str | None) -> dict:
    """observed_since's figures from the ledger as it stands."""
    moment = utc(since or "") or ""
    out: dict[str, dict] = {}
    for colour, version in versions.items():
        if not version:
            continue
        if target.prediction_metrics.task == "regression":
            n, mean, square = conn.execute(
                "SELECT COUNT(value), AVG(value), AVG(value * value) FROM answers WHERE version = ? AND time >= ?",
                (version, moment),
            ).fetchone()
            if not n:
                continue
            newest = conn.execute(
                "SELECT value FROM answers WHERE version = ? AND time >= ? AND value IS NOT NULL "
                "ORDER BY time DESC LIMIT ?",
                (version, moment, RECENT),
            ).fetchall()
            sd = (max(0.0, square - mean * mean) * n / (n - 1)) ** 0.5 if n > 1 else None
            out[colour] = {
                "rows": n,
                "value_mean": round(mean, 6),
                "value_sd": None if sd is None else round(sd, 6),
                "values": [v for (v,) in newest],
            }
            continue
        found = conn.execute(
            "SELECT predicted, COUNT(*), SUM(confidence), COUNT(confidence) FROM answers "
            "WHERE version = ? AND time >= ? GROUP BY 1",
            (version, moment),
        ).fetchall()
        if found:
            total, count = sum(r[2] or 0.0 for r in found), sum(r[3] for r in found)
            out[colour] = {
                "rows": sum(r[1] for r in found),
                "class_rows": {r[0]: r[1] for r in sorted(found)},
                "confidence_mean": round(total / count, 6) if count else None,
            }
    return out


def since_time(text: str | None, last_change: str | None, now: datetime | None = None) -> str | None:
    """`--since`: an ISO time, a duration back from now (30m, 2h, 7d), or `change` (the last change); None: all."""
    if text is None:
        return None
    if text == "change":
        if last_change is None:
            raise CanaryError("--since change: no change recorded yet")
        return utc(last_change)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        try:
            moment = (now or datetime.now(UTC)) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
        except OverflowError:
            return "0001-01-01T00:00:00"  # further back than any answer: all of them
        return moment.strftime("%Y-%m-%dT%H:%M:%S")
    found = utc(text)
    if found is None:
        raise CanaryError(f"--since wants an ISO time, a duration such as 30m, 2h or 7d, or `change`; got {text!r}")
    return found


def quality_report(target: Target, versions: dict[str, str | None], since: str | None) -> dict:
    """`canary quality`: per version with labels (blue and green first), labelled rows and, for a classifier, accuracy
    with its 95% Wilson interval and the confusion matrix, green - blue with its 95% interval; for a regressor, MAE
    and RMSE with their 95% intervals, and green's MAE over blue's with its interval."""
    from canary_kit.stats import difference, error_increase, wilson

    regression = target.prediction_metrics.task == "regression"
    with connect(target.state_dir) as conn:
        catch_up(target, conn, target.retention)
        listed = [v for v in versions.values() if v]
        others = [v for (v,) in conn.execute("SELECT DISTINCT version FROM answers") if v not in listed]
        found = quality(conn, listed + sorted(others), since)
        found_errors = errors(conn, listed + sorted(others), since) if regression else {}
        totals = counts(conn)
    role = {v: colour for colour, v in versions.items() if v}
    rows = []
    for version, q in found.items():
        e = found_errors.get(version, Errors())
        labelled = e.n if regression else q.labelled
        if not labelled and version not in role:
            continue
        row: dict = {"version": version, "role": role.get(version, ""), "labelled": labelled}
        if regression:
            mae, rmse = e.mae_interval(), e.rmse_interval()
            row |= {
                "mae": e.mae,
                "mae_interval": None if mae is None else list(mae),
                "rmse": e.rmse,
                "rmse_interval": None if rmse is None else list(rmse),
            }
        else:
            bounds = wilson(q.correct, q.labelled)
            row |= {
                "correct": q.correct,
                "accuracy": q.accuracy,
                "interval": None if bounds is None else list(bounds),
                "confusion": q.confusion,
            }
        rows.append(row)
    blue_version, green_version = versions.get("blue") or "", versions.get("green") or ""
    if regression:
        increase = error_increase(found_errors.get(green_version, Errors()), found_errors.get(blue_version, Errors()))
        compared = {"green_over_blue_mae": None if increase is None else list(increase)}
    else:
        blue, green = found.get(blue_version), found.get(green_version)
        diff = difference(green.correct, green.labelled, blue.correct, blue.labelled) if blue and green else None
        compared = {"green_minus_blue": None if diff is None else list(diff)}
    task = "regression" if regression else "classification"
    return {"since": since, "task": task, "versions": rows, **compared, **totals}
