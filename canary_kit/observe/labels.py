"""`canary labels FILE`: the true classes (a classifier's) or values (a regressor's), sent back later, joined to the
answers in the ledger.

A file is CSV with a header (`request_id,label` and optionally `row`) or JSON lines (`{"request_id": ..., "label":
..., "row": 0}`); `row` is the 0-based row of a batch request, 0 by default, in ASCII digits. A request id is nginx's
(32 lowercase hex digits), a label has no control character, and a file is at most MAX_FILE bytes (refused before it
is read whole). Every line is checked before anything
is written; a file with a refused line writes no label (unless skip_bad), and the labels are written in one
transaction, so a crash mid-file leaves the labels as they were.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from canary_kit.core.errors import CanaryError
from canary_kit.observe.ledger import transaction
from canary_kit.observe.views import CONTROL, clean

MAX_LINE = 64 * 1024  # bytes; a longer line is refused, not parsed
MAX_FILE = 64 * 1024 * 1024  # bytes; a larger file is refused before it is read (split it)
MAX_ROW = 1_000_000
MAX_LABEL = 200  # characters
FIELDS = ("request_id", "row", "label")
REQUEST_ID = re.compile(r"[0-9a-f]{32}")  # nginx's $request_id, which the ledger keys answers by
DIGITS = re.compile(r"[0-9]+")  # ASCII only: not 1_0, +2 or ٣, which int() would take


def read(source: str, stdin: BinaryIO) -> bytes:
    """A labels file's bytes (`-`: standard input), refused in one line, before it is read whole, past MAX_FILE."""
    cap = f"{MAX_FILE // (1024 * 1024)} MiB"
    if source == "-":
        data = stdin.read(MAX_FILE + 1)
        if len(data) > MAX_FILE:
            raise CanaryError(f"the labels on standard input are larger than {cap}: send them in parts")
        return data
    path = Path(source)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_FILE:
                raise CanaryError(f"{path} is larger than {cap} ({size:,} bytes): send it in parts")
            data = handle.read(MAX_FILE + 1)
    except OSError as exc:
        raise CanaryError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE:  # it grew while read (a pipe, a file being written)
        raise CanaryError(f"{path} is larger than {cap}: send it in parts")
    return data


@dataclass
class Label:
    line: int
    request_id: str
    row: int
    label: str


@dataclass
class Parsed:
    labels: list[Label] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)


def _value(label: object) -> str | None:
    """A regressor's true value as the ledger keeps it (the number's shortest text), or None if it is no number."""
    if isinstance(label, bool):
        return None
    try:
        number = float(label) if isinstance(label, (int, float, str)) else math.nan
    except ValueError:
        return None
    return repr(number) if math.isfinite(number) else None


def _record(number: int, fields: dict, classes: set[str], seen: dict, task: str = "classification") -> Label | str:
    """One line's label, or why it is refused."""
    extra = set(fields) - set(FIELDS)
    if extra:
        return f"unknown field {sorted(extra)[0]!r} (fields: request_id, row, label)"
    rid, label, row = fields.get("request_id"), fields.get("label"), fields.get("row", 0)
    if not isinstance(rid, str) or not rid.strip():
        return "missing request_id"
    if not REQUEST_ID.fullmatch(rid):
        return f"request_id must be nginx's request id, 32 lowercase hex digits, got {_shown(rid)}"
    if task == "regression":
        value = _value(label)
        if value is None:
            return f"label must be a finite number (the true value), got {_shown(label)}"
        label = value
    if not isinstance(label, str) or not label:
        return "missing label"
    if CONTROL.search(label):
        return f"label holds a control character: {_shown(label)}"
    if len(label) > MAX_LABEL:
        return f"label longer than {MAX_LABEL} characters"
    if classes and label not in classes:
        return f"label {_shown(label)} is not one of the model's classes ({', '.join(sorted(classes))})"
    if row in ("", None):
        row = 0
    if isinstance(row, str):
        if not DIGITS.fullmatch(row) or len(row) > 7:
            return f"row must be a whole number written in digits 0-9, got {_shown(row)}"
        row = int(row)
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < MAX_ROW:
        return f"row must be a whole number from 0 below {MAX_ROW:,}, got {_shown(row)}"
    key = (rid, row)
    if key in seen:
        return f"duplicate of line {seen[key]} (request {key[0]}, row {row})"
    seen[key] = number
    return Label(number, key[0], row, label)


def _shown(value: object) -> str:
    """A refused value in a message: quoted, control characters escaped, at most 40 characters."""
    text = repr(value)
    return clean(text if len(text) <= 42 else text[:40] + "...")


def parse(data: bytes, classes: set[str], task: str = "classification") -> Parsed:
    """Every line of a label file, each accepted or refused with its line number."""
    out = Parsed()
    raw_lines = data.splitlines()
    while raw_lines and not raw_lines[-1].strip():
        raw_lines.pop()
    if not raw_lines:
        out.refused.append((0, "the file holds no labels"))
        return out
    lines: list[tuple[int, str]] = []
    for number, raw in enumerate(raw_lines, start=1):
        if len(raw) > MAX_LINE:
            out.refused.append((number, f"line longer than {MAX_LINE // 1024} KiB ({len(raw):,} bytes)"))
            continue
        try:
            lines.append((number, raw.decode("utf-8-sig" if number == 1 else "utf-8")))
        except UnicodeDecodeError as exc:
            out.refused.append((number, f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
    first = next((text for _, text in lines if text.strip()), "")
    seen: dict = {}
    if first.lstrip().startswith("{"):
        for number, text in lines:
            if not text.strip():
                continue
            try:
                fields = json.loads(text)
            except ValueError as exc:
                out.refused.append((number, f"not JSON ({exc.msg if isinstance(exc, json.JSONDecodeError) else exc})"))
                continue
            if not isinstance(fields, dict):
                out.refused.append((number, f"a JSON line must be an object, got {type(fields).__name__}"))
                continue
            result = _record(number, fields, classes, seen, task)
            (out.labels.append(result) if isinstance(result, Label) else out.refused.append((number, result)))
        return out
    header_number, header = next(((n, t) for n, t in lines if t.strip()), (1, ""))
    columns = [c.strip() for c in next(csv.reader([header]))]
    missing = [c for c in ("request_id", "label") if c not in columns]
    if missing or len(set(columns)) != len(columns):
        why = f"missing column {missing[0]!r}" if missing else "a column appears twice"
        out.refused.append((header_number, f"CSV header must name request_id, label and optionally row: {why}"))
        return out
    for number, text in lines:
        if number <= header_number or not text.strip():
            continue
        try:
            values = next(csv.reader(io.StringIO(text)))
        except csv.Error as exc:
            out.refused.append((number, f"bad CSV ({exc})"))
            continue
        if len(values) != len(columns):
            out.refused.append((number, f"{len(values)} values for {len(columns)} columns"))
            continue
        result = _record(number, dict(zip(columns, (v.strip() for v in values))), classes, seen, task)
        (out.labels.append(result) if isinstance(result, Label) else out.refused.append((number, result)))
    return out


@dataclass
class Applied:
    joined: Counter = field(default_factory=Counter)  # version -> labels joined (new or replacing)
    replaced: Counter = field(default_factory=Counter)  # version -> of those, replacing an earlier label
    unknown: list[Label] = field(default_factory=list)  # no such answer in the ledger


def apply(conn: sqlite3.Connection, labels: list[Label]) -> Applied:
    """Join labels to their answers, in one transaction; a label for a row outside its answer is refused."""
    out = Applied()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    with transaction(conn):
        for item in labels:
            answer = conn.execute(
                "SELECT version FROM answers WHERE request_id = ? AND row = ?", (item.request_id, item.row)
            ).fetchone()
            if answer is None:
                out.unknown.append(item)
                continue
            old = conn.execute(
                "SELECT 1 FROM labels WHERE request_id = ? AND row = ?", (item.request_id, item.row)
            ).fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?)", (item.request_id, item.row, item.label, now)
            )
            out.joined[answer[0]] += 1
            out.replaced[answer[0]] += old is not None
    return out


def rows_of(conn: sqlite3.Connection, request_ids: set[str]) -> dict[str, int]:
    """How many rows each known request answered."""
    out: dict[str, int] = {}
    ids = list(request_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        query = f"SELECT request_id, MAX(row) + 1 FROM answers WHERE request_id IN ({marks}) GROUP BY 1"
        out.update(dict(conn.execute(query, chunk).fetchall()))
    return out


def check_rows(conn: sqlite3.Connection, parsed: Parsed) -> None:
    """Refuse labels whose row lies beyond the rows their (known) request answered."""
    sizes = rows_of(conn, {item.request_id for item in parsed.labels})
    kept = []
    for item in parsed.labels:
        size = sizes.get(item.request_id)
        if size is not None and item.row >= size:
            parsed.refused.append((item.line, f"row {item.row} is beyond request {item.request_id}'s {size} rows"))
        else:
            kept.append(item)
    parsed.labels = kept
    parsed.refused.sort()
