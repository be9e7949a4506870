"""The predictions in nginx's access log: what each answer of a prediction endpoint predicted, read by nginx as the
answer passed (canary-observe.js, at the endpoint's JSON path) and logged as JSON text, and what a window of
answers says of each version.

An entry's `predictions` is a JSON array, one value per row: a class (any JSON scalar: "Adelie", 2, true) for a
classifier, a number for a regressor; `confidence` (when the endpoint names where it is) the rows' top
probabilities. An answer whose predictions nginx could not read logs none: it counts as unobserved.

    rows = predictions(entry, "regression")     # [Row(predicted="152.3", value=152.3, confidence=None)]
    observed(entries, {"blue": "v1", "green": "v2"}, ("/predict",), "classification")["green"].class_rows
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

from canary_kit.core.endpoints import ENDPOINT, PredictionMetrics, asks_endpoint
from canary_kit.policy.evidence import Figures
from canary_kit.policy.stats import mean_sd


@dataclass(frozen=True)
class Row:
    """One row of an answer: the prediction as text (a class's name, or the number as JSON writes it), its number
    (a regressor's), and its top-class probability (when the endpoint names where it is)."""

    predicted: str
    value: float | None = None
    confidence: float | None = None


def _text(value: object) -> str | None:
    """A class as the ledger keeps it: a string as it is, another scalar as JSON writes it; None for a list or
    an object (not a class)."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _array(text: object) -> list | None:
    if not isinstance(text, str) or not text.startswith("["):
        return None
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, list) else None


def predictions(entry: dict, task: str = "classification") -> list[Row] | None:
    """The rows an entry's answer predicted; None when nginx read none (no path set, another shape of answer, a
    prediction a regressor gave that is not a number)."""
    values = _array(entry.get("predictions"))
    if values is None:
        return None
    confidence = _array(entry.get("confidence"))
    if confidence is not None and len(confidence) != len(values):
        confidence = None
    rows = []
    for i, value in enumerate(values):
        text = _text(value)
        number = _number(value)
        if text is None or (task == "regression" and number is None):
            return None
        top = None if confidence is None else _number(confidence[i])
        rows.append(Row(text, number if task == "regression" else None, top))
    return rows


@dataclass
class Observed:
    """One version's answers over a window, as read from them: rows per class (a classifier), the predicted values
    (a regressor), the rows' confidences, and the answers nginx could not read."""

    answers: int = 0
    unobserved: int = 0  # 200 answers of an endpoint whose predictions were not read
    class_rows: dict[str, int] = field(default_factory=dict)
    values: list[float] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(self.class_rows.values()) if self.class_rows else len(self.values)

    @property
    def confidence_mean(self) -> float | None:
        return round(sum(self.confidences) / len(self.confidences), 6) if self.confidences else None

    def add(self, rows: list[Row], task: str) -> None:
        self.answers += 1
        for row in rows:
            if task == "regression" and row.value is not None:
                self.values.append(row.value)
            else:
                self.class_rows[row.predicted] = self.class_rows.get(row.predicted, 0) + 1
            if row.confidence is not None:
                self.confidences.append(row.confidence)


def observed(
    entries: list[dict],
    versions: dict[str, str | None],
    endpoints: tuple[str, ...] = (ENDPOINT,),
    task: str = "classification",
    pinned: bool = True,
) -> dict[str, Observed]:
    """color -> what its version's live 200 answers of the endpoints predicted (shadow copies left out; pinned
    answers too unless `pinned`)."""
    color = {version: name for name, version in versions.items() if version}
    out = {name: Observed() for name in versions}
    for entry in entries:
        if entry.get("shadow") or entry.get("status") != 200 or not asks_endpoint(entry, endpoints):
            continue
        if not pinned and entry.get("pin"):
            continue
        name = color.get(str(entry.get("version")))
        if name is None:
            continue
        rows = predictions(entry, task)
        if rows is None:
            out[name].answers += 1
            out[name].unobserved += 1
        else:
            out[name].add(rows, task)
    return out


def fill(figures: Figures | None, seen: Observed | None, model: PredictionMetrics) -> Figures | None:
    """A version's window figures completed with what its answers predicted: a
    classifier's rows per class and mean confidence, a regressor's predicted values (`values`, for the gates; kept
    out of reports) with their mean and spread. `seen` (the answers nginx read, the split's only when the caller
    left pinned ones out) comes before the service's own metrics, which count every request, pinned or not."""
    if figures is None or seen is None:
        return figures
    out = replace(figures, unobserved=seen.unobserved)
    if model.task == "regression":
        spread = mean_sd(seen.values)
        return replace(
            out,
            rows=len(seen.values),
            values=tuple(seen.values),
            value_mean=None if spread is None else round(spread[0], 6),
            value_sd=None if spread is None else round(spread[1], 6),
            regressor=True,
        )
    if model.class_metric is None or model.observed:
        out = replace(out, rows=seen.rows, class_rows=dict(sorted(seen.class_rows.items())) or None)
    if (model.confidence_metric is None or model.observed) and seen.confidences:
        out = replace(out, confidence_mean=seen.confidence_mean)
    return out
