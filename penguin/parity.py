"""Do two predictors give the same answers? The rows to ask them and the comparison.

The rows: every row of the data set, and at least GENERATED rows made up from it: values on the data's
measurement grid over a range wider than the data's, nulls in every nullable feature, and for a tree model every
numeric split of every tree, asked at the split's value, one float step either side and the nearest grid values.
Shared by training (the ONNX gate), the tests and the bench (parity of the served answers).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from penguin.features import CATEGORICAL, FEATURES, NUMERIC
from penguin.predictor import Columns, sklearn_frame

TOLERANCE = 1e-6  # largest allowed difference in any probability; predicted classes must be identical
GENERATED = 10_000
SEED = 20251126
# The measurement grid of data/data.csv: bills to 0.1 mm, flippers to 1 mm, body mass to 25 g.
GRID = {"bill_length_mm": 0.1, "bill_depth_mm": 0.1, "flipper_length_mm": 1.0, "body_mass_g": 25.0}
CHOICES = {"island": ["Biscoe", "Dream", "Torgersen"], "sex": ["female", "male", None]}
NULL_SHARE = 0.08


def data_rows(path: Path) -> list[dict]:
    """The data set's feature rows as JSON would carry them: floats, strings and None for a missing value."""
    import pandas

    frame = pandas.read_csv(path)[list(FEATURES)].astype(object)
    missing = frame.isna()
    return [
        {name: None if missing.at[i, name] else (float(v) if name in NUMERIC else str(v)) for name, v in row.items()}
        for i, row in frame.iterrows()
    ]


def on_grid(value: float, step: float) -> float:
    """The grid value nearest `value`, as the double a JSON number like 39.1 parses to."""
    decimals = max(0, -math.floor(math.log10(step)))
    return round(round(value / step) * step, decimals)


def split_points(pipeline) -> list[tuple[str, float]]:
    """(measurement, raw value) of every numeric split in the model's trees, mapped back through the scaler."""
    model = pipeline.steps[-1][1]
    splits: set[tuple[int, float]] = set()
    if hasattr(model, "_predictors"):  # HistGradientBoosting
        for per_class in model._predictors:
            for predictor in per_class:
                n = predictor.nodes[~predictor.nodes["is_leaf"].astype(bool)]
                splits.update(zip(n["feature_idx"].tolist(), n["num_threshold"].tolist()))
    elif hasattr(model, "estimators_"):  # a forest
        for estimator in model.estimators_:
            t = estimator.tree_
            inner = t.children_left != -1
            splits.update(zip(t.feature[inner].tolist(), t.threshold[inner].tolist()))
    pre = pipeline.named_steps["preprocess"]
    if "num" not in pre.named_transformers_:
        return []
    measured = [c for name, _, cols in pre.transformers_ if name == "num" for c in cols]
    scaler = pre.named_transformers_["num"].named_steps["scale"]
    return sorted((measured[i], float(t * scaler.scale_[i] + scaler.mean_[i])) for i, t in splits if i < len(measured))


def generated_rows(pipeline, data: list[dict], count: int = GENERATED, seed: int = SEED) -> list[dict]:
    """`count` random rows on the grid (with nulls and out-of-range values), then rows at every split of the trees."""
    rng = np.random.default_rng(seed)
    spans = {}
    for name in NUMERIC:
        values = [r[name] for r in data if r[name] is not None]
        low, high = min(values), max(values)
        spans[name] = (max(GRID[name], low - 0.25 * (high - low)), high + 0.25 * (high - low))
    rows = []
    for _ in range(count):
        row = {}
        for name in FEATURES:
            if name in CATEGORICAL:
                row[name] = CHOICES[name][rng.integers(len(CHOICES[name]))]
            elif rng.random() < NULL_SHARE:
                row[name] = None
            else:
                row[name] = on_grid(rng.uniform(*spans[name]), GRID[name])
        rows.append(row)
    for name, value in split_points(pipeline):
        step = GRID[name]
        near = {
            value,
            math.nextafter(value, -math.inf),
            math.nextafter(value, math.inf),
            on_grid(value, step),
            on_grid(value - step, step),
            on_grid(value + step, step),
        }
        for candidate in sorted(v for v in near if v > 0):
            rows.append({**data[rng.integers(len(data))], name: candidate})
    return rows


def columns_of(rows: list[dict]) -> Columns:
    return {name: [row[name] for row in rows] for name in FEATURES}


def reference(pipeline, rows: list[dict]) -> np.ndarray:
    """scikit-learn's probabilities for the rows, fed as in training (NaN for a missing value)."""
    return pipeline.predict_proba(sklearn_frame(columns_of(rows)))


def compare(expected: np.ndarray, got: np.ndarray, classes: list[str]) -> dict:
    """The largest probability difference and the rows whose predicted class differs."""
    expected, got = np.asarray(expected, dtype=np.float64), np.asarray(got, dtype=np.float64)
    if expected.shape != got.shape:
        raise ValueError(f"shapes differ: expected {expected.shape}, got {got.shape}")
    diff = np.abs(expected - got).max(axis=1)
    flipped = np.flatnonzero(expected.argmax(axis=1) != got.argmax(axis=1))
    worst = int(diff.argmax())
    return {
        "rows": int(len(diff)),
        "max_abs_prob_diff": float(diff[worst]),
        "worst_row": worst,
        "class_mismatches": int(len(flipped)),
        "first_mismatches": [
            f"row {i}: {classes[expected[i].argmax()]} vs {classes[got[i].argmax()]}" for i in flipped[:3]
        ],
        "tolerance": TOLERANCE,
        "ok": bool(diff[worst] <= TOLERANCE and len(flipped) == 0),
    }


def summary(result: dict) -> str:
    """One line: rows, largest difference, class mismatches."""
    return (
        f"{result['rows']:,} rows, max |dp| {result['max_abs_prob_diff']:.2e} (limit {result['tolerance']:.0e}), "
        f"{result['class_mismatches']} class mismatches"
    )


def served_proba(url: str, rows: list[dict], classes: list[str], batch: int = 1000, timeout: float = 60) -> dict:
    """POST the rows to a running service's /predict in batches; its probabilities (in `classes` order), classes
    and the versions that answered."""
    import httpx

    proba, predictions, versions = [], [], set()
    with httpx.Client(timeout=timeout, trust_env=False) as client:
        for start in range(0, len(rows), batch):
            response = client.post(f"{url}/predict", json={"instances": rows[start : start + batch]})
            response.raise_for_status()
            answer = response.json()
            proba += [[p[c] for c in classes] for p in answer["probabilities"]]
            predictions += answer["predictions"]
            versions.add(answer["model_version"])
    return {"proba": np.array(proba, dtype=np.float64), "predictions": predictions, "versions": sorted(versions)}


def served_parity(url: str, pipeline, data: list[dict]) -> dict:
    """The served answers against scikit-learn's, on the data rows and the generated rows for this pipeline."""
    rows = data + generated_rows(pipeline, data)
    classes = [str(c) for c in pipeline.classes_]
    served = served_proba(url, rows, classes)
    result = compare(reference(pipeline, rows), served["proba"], classes)
    said = np.array(classes)[served["proba"].argmax(axis=1)].tolist()
    disagree = sum(a != b for a, b in zip(said, served["predictions"]))
    result["predictions_disagree_with_probabilities"] = disagree
    result["ok"] = result["ok"] and disagree == 0
    return {**result, "data_rows": len(data), "generated_rows": len(rows) - len(data), "versions": served["versions"]}
