"""What the ledger (ledger.py) says of each version: its labelled answers (a classifier's accuracy and confusion,
a regressor's errors) since a moment, all of them or only the split's (as the gates judge them); the ledger's
counts; and the model's classes, which a label must name.

    with connect(state_dir) as conn:
        quality(conn, ["v1.0.0", "v1.1.0"], since="2025-01-01T00:00:00")["v1.1.0"].accuracy
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

from canary_kit.core.target import Target
from canary_kit.observe.ledger import catch_up, connect, transaction
from canary_kit.observe.scrape import snapshots
from canary_kit.policy.stats import Errors


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


SPLIT_ONLY = " AND COALESCE(a.pinned, 0) = 0"  # the split's answers: what the gates judge (pinned ones left out)


def quality(
    conn: sqlite3.Connection, versions: list[str], since: str | None = None, unpinned: bool = False
) -> dict[str, VersionQuality]:
    """Per version, its answers since `since` (UTC 'YYYY-MM-DDTHH:MM:SS') that have a label (`unpinned`: only the
    split's, as the gates judge them)."""
    out = {v: VersionQuality(v) for v in versions}
    # From the labels (far fewer than answers) to their answers by key: CROSS JOIN keeps SQLite to that order.
    query = (
        "SELECT a.version, l.label, a.predicted, COUNT(*) FROM labels l CROSS JOIN answers a "
        f"ON a.request_id = l.request_id AND a.row = l.row WHERE a.time >= ?{SPLIT_ONLY if unpinned else ''} "
        "GROUP BY 1, 2, 3"
    )
    for version, label, predicted, n in conn.execute(query, (since or "",)):
        if version not in out:
            continue
        q = out[version]
        q.labelled += n
        q.correct += n if label == predicted else 0
        q.confusion.setdefault(label, {})[predicted] = n
    return out


def errors(
    conn: sqlite3.Connection, versions: list[str], since: str | None = None, unpinned: bool = False
) -> dict[str, Errors]:
    """Per version, a regressor's errors (label - prediction) on its answers since `since` that have a label
    (`unpinned`: only the split's)."""
    query = (
        "SELECT version, COUNT(*), SUM(ABS(e)), SUM(e * e), SUM(e * e * e * e) FROM ("
        "SELECT a.version AS version, CAST(l.label AS REAL) - a.value AS e FROM labels l CROSS JOIN answers a "
        "ON a.request_id = l.request_id AND a.row = l.row WHERE a.time >= ? AND a.value IS NOT NULL"
        f"{SPLIT_ONLY if unpinned else ''}) GROUP BY 1"
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
    """color -> (labelled rows, correct rows) of the split's answers (pinned ones left out) each version gave
    since `since` (the rollout's start), with the ledger brought up to date first."""
    with connect(target.state_dir) as conn:
        catch_up(target, conn, target.retention)
        found = quality(conn, [v for v in versions.values() if v], since, unpinned=True)
    return {color: (found[v].labelled, found[v].correct) if v in found else (0, 0) for color, v in versions.items()}


def errors_since(target: Target, versions: dict[str, str | None], since: str) -> dict[str, Errors]:
    """color -> a regressor's errors on the split's labelled answers (pinned ones left out) each version gave
    since `since` (the rollout's start), with the ledger brought up to date first."""
    with connect(target.state_dir) as conn:
        catch_up(target, conn, target.retention)
        found = errors(conn, [v for v in versions.values() if v], since, unpinned=True)
    return {color: found.get(v, Errors()) if v else Errors() for color, v in versions.items()}


def model_classes(target: Target, conn: sqlite3.Connection) -> set[str]:
    """The model's classes: what its backends export in the class metric (every class, from the start), else what
    the ledger learnt before."""
    found = {name for snap in snapshots(target).values() if snap for name in snap.classes}
    remember_classes(conn, found)
    return found or known_classes(conn)
