"""The ledger of answers and the label files, without processes: ingest from nginx's log format (idempotent,
incremental, through rotation and restarts, pruned), label files checked line by line (every kind of bad input
refused with its line number, the ledger unchanged), one transaction per file, and the accuracy interval."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from canary_kit.observe import labels as labelling
from canary_kit.observe import ledger, ledger_queries, quality
from canary_kit.policy.stats import difference

CLASSES = {"Adelie", "Chinstrap", "Gentoo"}
A, B, UNKNOWN = "a" * 32, "b" * 32, "f" * 32  # request ids in nginx's form ($request_id: 32 lowercase hex digits)


def entry(rid: str, predictions: str, version: str = "v1.0.0", time: str = "2026-12-03T07:00:00+00:00", **more):
    """An access-log entry as nginx writes it; `predictions`, the rows' classes separated by commas, is logged as
    the JSON array nginx read in the answer."""
    return {
        "time": time,
        "request_id": rid,
        "method": "POST",
        "uri": "/predict",
        "status": 200,
        "route": "blue",
        "version": version,
        "shadow": False,
        "mirrored": "off",
        "pin": "",
        "predictions": json.dumps(predictions.split(",")) if predictions else "",
        **more,
    }


def nginx_line(e: dict) -> str:
    """As nginx writes it: the predictions it read on a line of their own, then the entry (core/accesslog.py)."""
    e = dict(e)
    predictions = e.pop("predictions", "")
    kind = "S" if e.get("shadow") else "P"
    first = f"{kind} {e['request_id']} {predictions}\n" if predictions else ""
    return first + json.dumps(e, separators=(",", ":")) + "\n"


def write(log: Path, entries: list[dict], mode: str = "a") -> None:
    with open(log, mode) as f:
        for e in entries:
            f.write(nginx_line(e))


class Folder:
    """A state folder with an access log, standing in for a target."""

    def __init__(self, path: Path) -> None:
        self.state_dir = path
        (path / "logs").mkdir(parents=True, exist_ok=True)
        self.access_log = path / "logs" / "access.log"
        self.access_log.touch()
        self.retention = ledger.Retention()


def rows(folder: Folder) -> int:
    with ledger.connect(folder.state_dir) as conn:
        return ledger_queries.counts(conn)["answers"]


def test_ingest_is_incremental_idempotent_and_skips_what_is_not_an_answer(tmp_path):
    folder = Folder(tmp_path)
    write(
        folder.access_log,
        [
            entry("a", "Adelie"),
            entry("b", "Adelie,Gentoo,Chinstrap", "v1.1.0"),
            entry("s", "Adelie", shadow=True),
            entry("e", "", status=503),
            entry("h", "Adelie", uri="/health"),
        ],
    )
    with ledger.connect(tmp_path) as conn:
        assert ledger.ingest_file(conn, folder.access_log) == 4
        assert ledger.ingest_file(conn, folder.access_log) == 0  # the same log twice adds nothing
        conn.execute("DELETE FROM sources")  # even from the start again
        assert ledger.ingest_file(conn, folder.access_log) == 0
    with open(folder.access_log, "a") as f:
        f.write(nginx_line(entry("c", "Gentoo")) + nginx_line(entry("d", "Gentoo"))[:30])  # d: half written
    with ledger.connect(tmp_path) as conn:
        assert ledger.ingest_file(conn, folder.access_log) == 1
    with open(folder.access_log, "a") as f:
        f.write(nginx_line(entry("d", "Gentoo"))[30:])
    with ledger.connect(tmp_path) as conn:
        assert ledger.ingest_file(conn, folder.access_log) == 1
        assert conn.execute("SELECT predicted FROM answers WHERE request_id='b' ORDER BY row").fetchall() == [
            ("Adelie",),
            ("Gentoo",),
            ("Chinstrap",),
        ]


def test_a_rotated_log_is_followed_and_a_restarted_one_read_from_its_start(tmp_path):
    folder = Folder(tmp_path)
    write(folder.access_log, [entry("a", "Adelie")])
    with ledger.connect(tmp_path) as conn:
        ledger.ingest_file(conn, folder.access_log)
    write(folder.access_log, [entry("b", "Adelie")])  # written before the rotation, not read yet
    os.rename(folder.access_log, folder.access_log.with_name("access.log.1"))
    write(folder.access_log, [entry("c", "Adelie")], mode="w")
    with ledger.connect(tmp_path) as conn:
        assert ledger.ingest_file(conn, folder.access_log) == 2  # b from access.log.1, c from the new log
    folder.access_log.with_name("access.log.1").unlink()
    folder.access_log.unlink()
    write(folder.access_log, [entry("d", "Adelie")], mode="w")  # a new log, no rotated one: from its start
    with ledger.connect(tmp_path) as conn:
        assert ledger.ingest_file(conn, folder.access_log) == 1
    assert rows(folder) == 4


def test_a_log_truncated_in_place_and_grown_past_the_kept_offset_is_read_from_its_start(tmp_path):
    """The same file (the same inode), emptied and written again beyond where the ledger stood: its identity (its
    first line) is not the one kept, so it is read whole. (A deleted log whose inode number the file system hands
    out again to the next one is the same case.)"""
    folder = Folder(tmp_path)
    write(folder.access_log, [entry(f"a{i}", "Adelie") for i in range(10)])
    with ledger.connect(tmp_path) as conn:
        assert ledger.ingest_file(conn, folder.access_log) == 10
    inode = folder.access_log.stat().st_ino
    write(folder.access_log, [entry(f"b{i}", "Gentoo") for i in range(20)], mode="w")  # truncated, then 20 lines
    assert folder.access_log.stat().st_ino == inode
    with ledger.connect(tmp_path) as conn:
        added = ledger.ingest_file(conn, folder.access_log)
    print(f"\n20 answers written after truncating the log in place: {added} added")
    assert added == 20 and rows(folder) == 30


def test_rotations_between_two_reads_and_a_copied_and_truncated_log_lose_no_answer(tmp_path):
    """Two rotations before the ledger reads again (access.log.2 and .1 both unread to their end), lines nginx wrote
    to a renamed log before it reopened, then a rotation by copy and truncation in place: every answer once."""
    folder = Folder(tmp_path)
    log, one, two = (
        folder.access_log,
        folder.access_log.with_name("access.log.1"),
        folder.access_log.with_name("access.log.2"),
    )
    write(log, [entry("a0", "Adelie")])
    with ledger.connect(tmp_path) as conn:
        ledger.ingest_file(conn, log)
    write(log, [entry("a1", "Adelie")])
    os.rename(log, one)
    write(log, [entry("b0", "Adelie")], mode="w")
    write(one, [entry("a2", "Adelie")])  # nginx had not reopened yet
    os.rename(one, two)
    os.rename(log, one)
    write(log, [entry("c0", "Adelie"), entry("c1", "Adelie")], mode="w")
    with ledger.connect(tmp_path) as conn:
        assert ledger.ingest_file(conn, log) == 5  # a1, a2 (.2), b0 (.1), c0, c1
    write(two, [entry("a3", "Adelie")])  # a very late line in the oldest file
    one.write_bytes(log.read_bytes())  # copied
    with open(log, "r+") as f:
        f.truncate(0)  # and truncated in place
    write(log, [entry("d0", "Adelie")])
    with ledger.connect(tmp_path) as conn:
        assert ledger.ingest_file(conn, log) == 2  # a3, d0
        kept = conn.execute("SELECT COUNT(*) FROM sources").fetchone()[0]
    print(f"\n{rows(folder)} answers from 8 lines over 3 rotations; {kept} positions kept")
    assert rows(folder) == 8


def test_old_answers_and_their_labels_are_pruned_by_age_and_count(tmp_path):
    folder = Folder(tmp_path)
    now = datetime(2026, 12, 3, tzinfo=UTC)
    old = [entry(f"o{i}", "Adelie", time=(now - timedelta(days=40)).isoformat()) for i in range(5)]
    new = [entry(f"n{i}", "Adelie", time=(now - timedelta(minutes=i)).isoformat()) for i in range(2000)]
    write(folder.access_log, old + new)
    with ledger.connect(tmp_path) as conn:
        ledger.ingest_file(conn, folder.access_log)
        labelling.apply(conn, [labelling.Label(1, "o0", 0, "Adelie"), labelling.Label(2, "n0", 0, "Adelie")])
        assert ledger.prune(conn, ledger.Retention(days=30, rows=1500), now) == 505
        assert ledger_queries.counts(conn) == {"answers": 1500, "labels": 1}  # the newest kept, o0's label gone
        assert (
            conn.execute("SELECT MIN(time) FROM answers").fetchone()[0]
            > (now - timedelta(minutes=1500)).isoformat()[:19]
        )


def test_a_second_holding_more_answers_than_the_limit_is_kept_whole(tmp_path):
    """nginx logs whole seconds: the row limit never cuts into the newest second (a 1,500-row batch stays)."""
    folder = Folder(tmp_path)
    now = datetime(2026, 12, 3, tzinfo=UTC)
    write(
        folder.access_log,
        [entry(f"o{i}", "Adelie", time=(now - timedelta(minutes=5)).isoformat()) for i in range(10)]
        + [entry("batch", ",".join(["Adelie"] * 1500), time=now.isoformat())],
    )
    with ledger.connect(tmp_path) as conn:
        ledger.ingest_file(conn, folder.access_log)
        assert ledger.prune(conn, ledger.Retention(days=30, rows=1000), now) == 10
        assert ledger_queries.counts(conn)["answers"] == 1500


BAD_AS_WRITTEN = {
    "an unknown column": b"request_id,label,colour\na,Adelie,red\n",
    "a missing column": b"request_id,row\na,0\n",
    "a class the model does not have": b"request_id,label\na,Emperor\n",
    "a negative row": b"request_id,row,label\na,-1,Adelie\n",
    "a row beyond the request": b"request_id,row,label\na,3,Adelie\n",
    "a row that is not a number": b"request_id,row,label\na,first,Adelie\n",
    "a duplicate line": b"request_id,label\na,Adelie\na,Gentoo\n",
    "an empty file": b"",
    "only blank lines": b"\n\n  \n",
    "not UTF-8": b"request_id,label\na,Ad\xe9lie\n",
    "JSON that is not an object": b'{"request_id": "a", "label": "Adelie"}\n["a", "Adelie"]\n',
    "bad JSON": b'{"request_id": "a", "label": "Adelie"}\n{"request_id": "b", "label": \n',
    "a JSON line without a label": b'{"request_id": "a"}\n',
    "a JSON row that is a float": b'{"request_id": "a", "row": 0.5, "label": "Adelie"}\n',
    "a 10 MB line": b"request_id,label\na,Adelie\n" + b"b," + b"x" * 10_000_000 + b"\n",
    "too many values on a line": b"request_id,label\na,Adelie,extra\n",
}
BAD = {  # request ids "a" and "b" as nginx writes them, so that each file is refused for what its name says
    kind: data.replace(b"\na,", b"\n" + A.encode() + b",")
    .replace(b"\nb,", b"\n" + B.encode() + b",")
    .replace(b'"a"', f'"{A}"'.encode())
    .replace(b'"b"', f'"{B}"'.encode())
    for kind, data in BAD_AS_WRITTEN.items()
}
# Lines refused since #27, each of its own kind: one file, every line refused with its number, nothing written.
MALFORMED = [
    {"request_id": "abc123", "label": "Adelie"},  # not nginx's form: too short
    {"request_id": A.upper(), "label": "Adelie"},  # upper case
    {"request_id": A[:31] + "g", "label": "Adelie"},  # not hex
    {"request_id": A + "0", "label": "Adelie"},  # 33 digits
    {"request_id": "\x1b[2J" + A[5:], "label": "Adelie"},  # a control character (clears a terminal)
    {"request_id": A, "row": "1_0", "label": "Adelie"},  # int() takes it
    {"request_id": A, "row": "+2", "label": "Adelie"},  # int() takes it
    {"request_id": A, "row": "\u0663", "label": "Adelie"},  # ARABIC-INDIC DIGIT THREE: int() takes it
    {"request_id": A, "row": " 1", "label": "Adelie"},  # int() takes it
    {"request_id": A, "row": "0x1", "label": "Adelie"},
    {"request_id": A, "row": "1e0", "label": "Adelie"},
    {"request_id": A, "label": "Adelie\x1b[31m"},  # an escape sequence in a label
    {"request_id": A, "label": "Ade\rlie"},  # a carriage return: hides what came before on a terminal
    {"request_id": A, "label": "\u202eeilednA"},  # RIGHT-TO-LEFT OVERRIDE
    {"request_id": A, "label": "Adelie\x00"},  # NUL
]


def ledger_bytes(folder: Path) -> bytes:
    return b"".join(
        (folder / name).read_bytes() for name in (ledger.LEDGER, ledger.LEDGER + "-wal") if (folder / name).exists()
    )


@pytest.mark.parametrize("kind", list(BAD))
def test_each_bad_label_file_is_refused_naming_the_line_and_changes_nothing(tmp_path, kind):
    folder = Folder(tmp_path)
    write(folder.access_log, [entry(A, "Adelie,Gentoo,Gentoo"), entry(B, "Chinstrap")])
    with ledger.connect(tmp_path) as conn:
        ledger.ingest_file(conn, folder.access_log)
        ledger_queries.remember_classes(conn, CLASSES)
        labelling.apply(conn, [labelling.Label(1, B, 0, "Chinstrap")])
        parsed = labelling.parse(BAD[kind], ledger_queries.known_classes(conn))
        labelling.check_rows(conn, parsed)
    print(f"\n{kind}: {[(line, why[:90]) for line, why in parsed.refused]}")
    assert parsed.refused, kind
    assert all(isinstance(line, int) for line, _ in parsed.refused)
    before = ledger_bytes(tmp_path)
    with ledger.connect(tmp_path) as conn:  # as `canary labels` does: refused lines, nothing written
        if not parsed.refused:
            labelling.apply(conn, parsed.labels)
    assert ledger_bytes(tmp_path) == before


def test_malformed_label_lines_are_each_refused_with_their_number_and_nothing_is_written(tmp_path):
    folder = Folder(tmp_path)
    write(folder.access_log, [entry(A, "Adelie,Gentoo,Gentoo")])
    data = b"".join(json.dumps(fields).encode() + b"\n" for fields in MALFORMED)
    with ledger.connect(tmp_path) as conn:
        ledger.ingest_file(conn, folder.access_log)
    before = ledger_bytes(tmp_path)
    with ledger.connect(tmp_path) as conn:  # as `canary labels` does: every line checked, refused ones: nothing written
        parsed = labelling.parse(data, CLASSES)
        labelling.check_rows(conn, parsed)
    for line, why in parsed.refused:
        print(f"line {line}: {why}")
    print(f"{len(parsed.refused)} of {len(MALFORMED)} lines refused, {len(parsed.labels)} accepted")
    assert [line for line, _ in parsed.refused] == list(range(1, len(MALFORMED) + 1)) and not parsed.labels
    assert not any(labelling.CONTROL.search(why) for _, why in parsed.refused)  # every message printable as it is
    assert ledger_bytes(tmp_path) == before


def test_a_labels_file_past_the_cap_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "labels.csv"
    with open(big, "wb") as f:
        f.truncate(labelling.MAX_FILE + 1)  # sparse: nothing is written, and reading it whole would take 64 MiB
    with pytest.raises(labelling.CanaryError, match="larger than 64 MiB"):
        labelling.read(str(big), None)
    import io

    with pytest.raises(labelling.CanaryError, match="standard input"):
        labelling.read("-", io.BytesIO(b"x" * (labelling.MAX_FILE + 1)))
    assert labelling.read("-", io.BytesIO(b"request_id,label\n")) == b"request_id,label\n"


def test_labels_join_replace_and_count_unknown_per_version(tmp_path):
    folder = Folder(tmp_path)
    write(folder.access_log, [entry(A, "Adelie,Gentoo"), entry(B, "Chinstrap", "v1.1.0")])
    text = (
        f'{{"request_id": "{A}", "row": 1, "label": "Gentoo"}}\n{{"request_id": "{B}", "label": "Adelie"}}\n'
        f'{{"request_id": "{UNKNOWN}", "label": "Adelie"}}\n'
    ).encode()
    with ledger.connect(tmp_path) as conn:
        ledger.ingest_file(conn, folder.access_log)
        parsed = labelling.parse(text, CLASSES)
        assert not parsed.refused
        applied = labelling.apply(conn, parsed.labels)
        assert dict(applied.joined) == {"v1.0.0": 1, "v1.1.0": 1} and [u.request_id for u in applied.unknown] == [
            UNKNOWN
        ]
        again = labelling.apply(conn, labelling.parse(f"request_id,label\n{B},Chinstrap\n".encode(), CLASSES).labels)
        assert dict(again.replaced) == {"v1.1.0": 1}
        found = ledger_queries.quality(conn, ["v1.0.0", "v1.1.0"])
    assert (found["v1.0.0"].labelled, found["v1.0.0"].correct) == (1, 1)
    assert (found["v1.1.0"].labelled, found["v1.1.0"].correct) == (1, 1)  # the replaced label counts


def test_a_crash_mid_file_leaves_the_ledger_as_it_was(tmp_path):
    folder = Folder(tmp_path)
    write(folder.access_log, [entry(f"r{i}", "Adelie") for i in range(100)])
    with ledger.connect(tmp_path) as conn:
        ledger.ingest_file(conn, folder.access_log)
    labels = [labelling.Label(i, f"r{i}", 0, "Adelie") for i in range(100)]

    class Crash(sqlite3.Connection):
        calls = 0

        def execute(self, *args):
            Crash.calls += 1
            if Crash.calls == 120:  # in the middle of the file
                raise KeyboardInterrupt
            return super().execute(*args)

    conn = sqlite3.connect(tmp_path / ledger.LEDGER, isolation_level=None, factory=Crash)
    try:
        with pytest.raises(KeyboardInterrupt):
            labelling.apply(conn, labels)
        assert conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 0
    finally:
        conn.close()
    with ledger.connect(tmp_path) as conn:
        assert ledger_queries.counts(conn) == {"answers": 100, "labels": 0}


def test_the_accuracy_difference_interval():
    diff, low, high = difference(74, 100, 98, 100)
    print(f"\n74/100 - 98/100: {diff:+.3f} [{low:+.3f}, {high:+.3f}]")
    assert diff == pytest.approx(-0.24) and low < -0.24 < high < 0  # Newcombe's interval: worse, with confidence
    assert difference(5, 10, 5, 10)[1] < 0 < difference(5, 10, 5, 10)[2]
    assert difference(0, 0, 1, 1) is None


def test_since_takes_a_time_a_duration_or_the_last_change():
    now = datetime(2026, 12, 3, 12, tzinfo=UTC)
    assert quality.since_time("2h", None, now) == "2026-12-03T10:00:00"
    assert quality.since_time("2026-12-03T09:00:00+01:00", None) == "2026-12-03T08:00:00"
    assert quality.since_time("change", "2026-12-03T07:00:00+00:00") == "2026-12-03T07:00:00"
    with pytest.raises(ledger.CanaryError, match="--since wants"):
        quality.since_time("yesterday", None)
    with pytest.raises(ledger.CanaryError, match="--since wants"):
        quality.since_time("0001-01-01T00:00:00+01:00", None)  # before the first representable moment in UTC
    assert quality.since_time("1000000d", None) == "0001-01-01T00:00:00"  # further back than anything: all


def test_pinned_answers_are_kept_apart_from_the_gates_and_pinned_requests_counted(tmp_path):
    """An answer to a pinned request is in the ledger, marked: the label gates (unpinned) leave it out, `canary
    quality` counts it; every pinned request to an endpoint is counted by the version it asked for."""
    folder = Folder(tmp_path)
    write(
        folder.access_log,
        [
            entry("u1", "Adelie", "v1.1.0"),
            entry("p1", "Adelie", "v1.1.0", pin="green"),
            entry("p2", "", "v1.0.0", pin="green", status=503),  # asked for green, shed: still a pinned request
            entry("p3", "Gentoo", "v1.0.0", pin="blue"),
            entry("p4", "Adelie", "v1.0.0", pin="blue", uri="/health", path="/health"),  # not an endpoint
        ],
    )
    with ledger.connect(tmp_path) as conn:
        assert ledger.ingest_file(conn, folder.access_log) == 3
        labelling.apply(conn, [labelling.Label(i, rid, 0, "Adelie") for i, rid in enumerate(["u1", "p1", "p3"])])
        every = ledger_queries.quality(conn, ["v1.0.0", "v1.1.0"])
        split = ledger_queries.quality(conn, ["v1.0.0", "v1.1.0"], unpinned=True)
        pins = dict(conn.execute("SELECT pin, COUNT(*) FROM pins GROUP BY 1").fetchall())
    print(
        f"\nlabelled, all: { {v: q.labelled for v, q in every.items()} }; the split's: "
        f"{ {v: q.labelled for v, q in split.items()} }; pinned requests {pins}"
    )
    assert {v: q.labelled for v, q in every.items()} == {"v1.0.0": 1, "v1.1.0": 2}
    assert {v: q.labelled for v, q in split.items()} == {"v1.0.0": 0, "v1.1.0": 1}
    assert pins == {"green": 2, "blue": 1}


def test_predictions_are_joined_to_their_entry_across_reads_and_other_requests_lines(tmp_path):
    """A read that ends between an answer's prediction line and its entry gives the answer whole the next time;
    another request's lines between the two change nothing; a line written before predictions had lines of their
    own (one JSON object holding them) is still read."""
    folder = Folder(tmp_path)
    first, other = nginx_line(entry(A, "Adelie,Gentoo")).splitlines(keepends=True)
    with ledger.connect(folder.state_dir) as conn:
        folder.access_log.write_text(first)  # the predictions, their entry not yet written
        assert ledger.ingest_file(conn, folder.access_log) == 0
        with open(folder.access_log, "a") as f:
            f.write(nginx_line(entry(B, "Chinstrap")) + other)
            f.write(json.dumps(entry(UNKNOWN, "Gentoo"), separators=(",", ":")) + "\n")  # the older form
        assert ledger.ingest_file(conn, folder.access_log) == 4
        got = conn.execute("SELECT request_id, row, predicted FROM answers ORDER BY request_id, row").fetchall()
    print(f"\nledger rows: {got}")
    assert got == [(A, 0, "Adelie"), (A, 1, "Gentoo"), (B, 0, "Chinstrap"), (UNKNOWN, 0, "Gentoo")]
