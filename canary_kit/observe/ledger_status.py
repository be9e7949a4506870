"""What `canary status` and the dashboard read in the ledger (ledger.py), never waiting on it: each version's
accuracy or error on its labelled answers, what its answers predicted since the last change, and the pinned
requests since then. When another command writes the ledger, or the disk is full, each shows what it holds."""

from __future__ import annotations

import sqlite3

from canary_kit.core.errors import CanaryError
from canary_kit.core.target import Target
from canary_kit.observe.ledger import LEDGER, READ_WAIT, catch_up, connect, utc
from canary_kit.observe.ledger_queries import errors, quality


def accuracy_by_version(target: Target, versions: dict[str, str | None]) -> dict[str, dict] | None:
    """color -> labelled rows and accuracy (a classifier) or MAE (a regressor) of all that version's answers, for
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
                    color: {"version": v, "labelled": found_errors[v].n, "mae": found_errors[v].mae}
                    for color, v in versions.items()
                    if v and found_errors[v].n
                }
            found = quality(conn, listed)
    except CanaryError:  # busy, or a full disk: status shows the rest
        return None
    return {
        color: {"version": v, "labelled": found[v].labelled, "accuracy": found[v].accuracy}
        for color, v in versions.items()
        if v and found[v].labelled
    }


def pinned_since(target: Target, since: str | None) -> dict[str, int] | None:
    """Pinned requests to the model's endpoints since `since` (None: all), by the version they asked for, for
    `canary status`: {"green": n, "blue": n}. It never waits on the ledger: what it holds when another command
    writes, None when even reading it would wait (or the disk is full)."""
    try:
        with connect(target.state_dir, wait=READ_WAIT) as conn:
            try:
                catch_up(target, conn, target.retention)
            except CanaryError:
                pass  # another command writes, or the disk is full: what it holds
            found = conn.execute(
                "SELECT pin, COUNT(*) FROM pins WHERE time >= ? GROUP BY 1", (utc(since or "") or "",)
            ).fetchall()
    except CanaryError:
        return None
    return {"green": 0, "blue": 0} | dict(found)


RECENT = 5000  # a regressor's newest predicted values per version that `canary status` compares


def observed_since(target: Target, versions: dict[str, str | None], since: str | None) -> dict[str, dict]:
    """color -> what its version's answers since `since` predicted, from the ledger brought up to date: a
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
    for color, version in versions.items():
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
            out[color] = {
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
            out[color] = {
                "rows": sum(r[1] for r in found),
                "class_rows": {r[0]: r[1] for r in sorted(found)},
                "confidence_mean": round(total / count, 6) if count else None,
            }
    return out
