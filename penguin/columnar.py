"""The columnar form of a request, `{"columns": {feature: [one value per row]}}`, parsed and checked column by column.

A table's rows travel as one array per feature instead of one object per row: the body is about a third of the
size, and each column is checked and converted with numpy in a handful of array operations (no per-row model). The
rules are the row form's (`Penguin`): every feature present and no other, islands and sexes from their lists (sex
may be null), measurements finite numbers greater than 0 or null (booleans and numbers in strings refused), and in
addition every column of the same length, at least 1 row and at most MAX_COLUMN_ROWS.

Two readings of a body, one set of rules:
- the fast one: msgspec decodes the body straight into typed columns (`BODY`, the rules above written as msgspec
  types: each value's type, > 0, the categories), in one pass in C; what is left (lengths, row limits) is checked
  here. It accepts a body only if the reference reading would accept it, with the same values
  (tests/test_columnar.py checks both readings on the same bodies);
- the reference one, for any body msgspec refuses: pydantic-core parses it (NaN and Infinity too) and `check`
  judges it, naming the column and the first bad row: ColumnError(loc=("columns", "bill_length_mm", 3), ...).

The answer is written by orjson from the probability array (`answer`). Kept free of heavy imports (numpy, msgspec,
orjson and pydantic-core only): the Bento ships this module.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import numpy as np
import orjson
import pydantic_core

from penguin.features import CATEGORICAL, FEATURES, MAX_COLUMN_ROWS, NUMERIC, Penguin

NoneType = type(None)
NUMBER_TYPES = frozenset({float, int})
NULLABLE_NUMBER_TYPES = frozenset({float, int, NoneType})


def _choices(name: str) -> tuple[tuple[str, ...], bool]:
    """The values a category column may hold (from the row model's Literal), and whether null is one of them."""
    from typing import get_args

    annotation = Penguin.model_fields[name].annotation
    values, nullable = [], False
    stack = [annotation]
    while stack:
        for arg in get_args(stack.pop()) or ():
            if arg is NoneType:
                nullable = True
            elif isinstance(arg, str):
                values.append(arg)
            else:
                stack.append(arg)
    return tuple(values), nullable


CHOICES = {name: _choices(name) for name in CATEGORICAL}


def _typed_column(name: str) -> object:
    """A column's msgspec type: a category's choices (null where allowed), else a number > 0 or null."""
    if name in CHOICES:
        choices, nullable = CHOICES[name]
        item = Literal[choices]
        return list[item | None if nullable else item]
    return list[Annotated[float, msgspec.Meta(gt=0)] | None]  # ints read as floats; booleans, strings refused


_TypedColumns = msgspec.defstruct(
    "TypedColumns", [(name, _typed_column(name)) for name in FEATURES], forbid_unknown_fields=True
)
BODY = msgspec.json.Decoder(msgspec.defstruct("TypedBody", [("columns", _TypedColumns)], forbid_unknown_fields=True))


class ColumnError(ValueError):
    """A refused columnar request: where (a pydantic-style loc), what, and an error type like pydantic's."""

    def __init__(self, loc: tuple, message: str, kind: str = "value_error") -> None:
        super().__init__(message)
        self.loc, self.message, self.kind = loc, message, kind

    def validation_error(self, title: str = "ColumnsRequest"):
        """The same refusal as a pydantic ValidationError: BentoML answers it 400 as it answers the row form's."""
        from pydantic import ValidationError
        from pydantic_core import PydanticCustomError

        error = PydanticCustomError(self.kind, self.message)  # no context: the message is not formatted
        return ValidationError.from_exception_data(title, [{"type": error, "loc": self.loc, "input": None}])


class Columns(dict):
    """Checked columns, {feature: values}: float64 arrays (NaN where null) for measurements, lists for categories."""

    rows: int = 0


def parse(body: bytes, max_rows: int = MAX_COLUMN_ROWS) -> Columns:
    """A request body -> its checked columns; ColumnError naming the problem (and the column and row) otherwise."""
    try:
        typed = BODY.decode(body).columns
    except msgspec.MsgspecError:  # not JSON, or a value or column the rules refuse: the reference reading says which
        return check(reference(body), max_rows)
    columns = {name: getattr(typed, name) for name in FEATURES}
    out = Columns()
    out.rows = rows(columns, max_rows)
    # Every measurement column in one float64 array (one conversion and one check for all); each column a row of it.
    # null -> NaN; msgspec has already refused NaN, infinities, out-of-range numbers and values <= 0 (`BODY`).
    table = np.array([columns[name] for name in NUMERIC], dtype=np.float64)
    numbers = dict(zip(NUMERIC, table))
    for name in FEATURES:
        out[name] = columns[name] if name in CHOICES else numbers[name]
    return out


def reference(body: bytes) -> object:
    """The body parsed by pydantic-core, as the row form's is (NaN and Infinity kept, for `check` to refuse)."""
    try:
        return pydantic_core.from_json(body, allow_inf_nan=True)
    except ValueError as exc:
        raise ColumnError((), f"Invalid JSON: {exc}", "json_invalid") from None


def kind(value: object) -> str:
    """A JSON value's type, as a client would call it."""
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        str: "a string",
        list: "an array",
        dict: "an object",
        float: "a number",
        int: "a number",
    }.get(type(value), type(value).__name__)


def check(data: object, max_rows: int = MAX_COLUMN_ROWS) -> Columns:
    """The parsed body -> its checked columns (see the module's rules)."""
    if not isinstance(data, dict):
        raise ColumnError(
            (), f'the body must be a JSON object {{"columns": {{feature: [values]}}}}, not {kind(data)}', "model_type"
        )
    if "columns" not in data:
        raise ColumnError(("columns",), 'Field required: send {"columns": {feature: [one value per row]}}', "missing")
    for key in data:
        if key != "columns":
            raise ColumnError(
                (key,), f'Extra inputs are not permitted: {key!r} (the body holds only "columns")', "extra_forbidden"
            )
    columns = data["columns"]
    if not isinstance(columns, dict):
        raise ColumnError(
            ("columns",), f"columns must be an object {{feature: [values]}}, not {kind(columns)}", "model_type"
        )
    for name in columns:
        if name not in Penguin.model_fields:
            raise ColumnError(
                ("columns", name), f"unknown column {name!r}; the columns are {', '.join(FEATURES)}", "extra_forbidden"
            )
    for name in FEATURES:
        if name not in columns:
            raise ColumnError(
                ("columns", name),
                f"missing column {name!r}: every feature needs a column (a measurement's values may be null)",
                "missing",
            )
        if not isinstance(columns[name], list):
            raise ColumnError(
                ("columns", name),
                f"column {name!r} must be an array of values, one per row, not {kind(columns[name])}",
                "list_type",
            )
    out = Columns()
    out.rows = rows(columns, max_rows)
    for name in FEATURES:
        values = columns[name]
        out[name] = category(name, values) if name in CHOICES else measurement(name, values)
    return out


def rows(columns: dict, max_rows: int) -> int:
    """The number of rows: every column (an array each) of the same length, at least 1 and at most `max_rows`."""
    count = len(columns[FEATURES[0]])
    for name in FEATURES[1:]:
        if len(columns[name]) != count:
            raise ColumnError(
                ("columns", name),
                f"column {name!r} has {len(columns[name])} rows but column "
                f"{FEATURES[0]!r} has {count}: every column needs one value per row",
                "length_mismatch",
            )
    if count == 0:
        raise ColumnError(
            ("columns", FEATURES[0]), "no rows: send at least 1 row (columns of at least 1 value)", "too_short"
        )
    if count > max_rows:
        raise ColumnError(
            ("columns", FEATURES[0]), f"{count} rows: send at most {max_rows} rows per request", "too_long"
        )
    return count


def category(name: str, values: list) -> list:
    """A category column: every value one of the field's choices (or null where the field allows it)."""
    choices, nullable = CHOICES[name]
    allowed = {*choices, None} if nullable else set(choices)
    try:
        if set(values) <= allowed:
            return values
    except TypeError:  # an array or object among the values: unhashable
        pass
    for row, value in enumerate(values):
        if not (isinstance(value, str) or value is None) or value not in allowed:
            options = " or ".join(f"{c!r}" for c in choices) + (" or null" if nullable else "")
            raise ColumnError(
                ("columns", name, row),
                f"column {name!r}, row {row}: Input should be {options}, "
                f"not {kind(value) if not isinstance(value, str) else repr(value)}",
                "literal_error",
            )
    return values  # not reached


def _fits(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def measurement(name: str, values: list) -> np.ndarray:
    """A measurement column as float64 (NaN where null): numbers only, finite and greater than 0, or null."""
    types = set(map(type, values))
    if not types <= NULLABLE_NUMBER_TYPES:
        row = next(i for i, v in enumerate(values) if type(v) not in NULLABLE_NUMBER_TYPES)
        raise ColumnError(
            ("columns", name, row),
            f"column {name!r}, row {row}: Input should be a number or null, not {kind(values[row])}",
            "float_type",
        )
    try:
        array = np.array(values, dtype=np.float64)  # null -> NaN
    except OverflowError:  # an integer beyond float64
        row = next(i for i, v in enumerate(values) if isinstance(v, int) and not _fits(v))
        raise ColumnError(
            ("columns", name, row), f"column {name!r}, row {row}: Input should be a finite number", "finite_number"
        ) from None
    good = array > 0  # NaN (null, or a NaN literal) is not
    good &= array < np.inf
    if good.all():
        return array
    bad = ~good
    if NoneType in types:
        bad &= np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
        if not bad.any():
            return array
    row = int(bad.argmax())
    value = array[row]
    if np.isfinite(value):
        raise ColumnError(
            ("columns", name, row), f"column {name!r}, row {row}: Input should be greater than 0", "greater_than"
        )
    raise ColumnError(
        ("columns", name, row),
        f"column {name!r}, row {row}: Input should be a finite number "
        "(NaN and infinity are refused; send null for a missing value)",
        "finite_number",
    )


def answer(predictions: list[str], classes: list[str], proba: np.ndarray, version: str) -> bytes:
    """The columnar answer's JSON: `{"predictions": [...], "probabilities": {class: [per row]}, "model_version": ...}`.

    Written by orjson straight from the probability array, a contiguous row per class (no Python float per value, no
    pydantic model): each float in its shortest form that reads back to the same float64, so the answer is exact.
    """
    by_class = np.ascontiguousarray(proba.T, dtype=np.float64)
    return orjson.dumps(
        {"predictions": predictions, "probabilities": dict(zip(classes, by_class)), "model_version": version},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
