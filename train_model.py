"""Train the two versions of the penguin classifier and save them to the BentoML model store.

    python train_model.py            # train v1.0.0 (stable) and v1.1.0 (candidate), export to models/
    python train_model.py --force    # replace versions that already exist in the store
    python train_model.py --write-data   # (maintainers) rewrite data/data.csv from the palmerpenguins package

v1.0.0 is a regularised logistic regression; v1.1.0 is a histogram gradient-boosted tree ensemble. Both share
one preprocessing recipe (impute, scale, one-hot) inside a scikit-learn Pipeline, a fixed stratified split and
fixed seeds, so running this twice gives the same models.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
from pathlib import Path

import bentoml
import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from penguin.features import (
    CANDIDATE_VERSION,
    CATEGORICAL,
    FEATURES,
    MODEL_NAME,
    NUMERIC,
    STABLE_VERSION,
    TARGET,
)

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data" / "data.csv"
EXPORT_DIR = ROOT / "models"
SEED = 42
HOLDOUT = 0.25
MODEL_FILE = "model.joblib"

# One entry per version: (algorithm name, estimator factory, hyper-parameters, features it learns from).
# The stable model sees the four body measurements; the candidate adds island and sex and boosted trees.
VERSION_SPECS = {
    STABLE_VERSION: (
        "LogisticRegression",
        LogisticRegression,
        {"C": 0.5, "max_iter": 2000},
        NUMERIC,
    ),
    CANDIDATE_VERSION: (
        "HistGradientBoostingClassifier",
        HistGradientBoostingClassifier,
        {"max_iter": 60, "learning_rate": 0.1, "max_depth": 3, "l2_regularization": 1.0, "random_state": SEED},
        FEATURES,
    ),
}


def write_data(path: Path = DATA) -> None:
    """Write the Palmer penguins data (shipped inside the palmerpenguins package) as data/data.csv."""
    from palmerpenguins import load_penguins  # maintainers only: the CSV is committed

    df = load_penguins().rename(columns={"species": TARGET})
    df = df[[*FEATURES, TARGET]]
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    print(f"wrote {len(df)} rows to {path}")


def load_data(path: Path = DATA) -> tuple[pd.DataFrame, pd.Series, str]:
    """Read the data set; return features, labels and the SHA-256 of the file."""
    if not path.exists():
        raise SystemExit(f"error: {path} not found (it ships with the repository)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    df = pd.read_csv(path)
    missing = [c for c in (*FEATURES, TARGET) if c not in df.columns]
    if missing:
        raise SystemExit(f"error: {path} lacks columns {missing}")
    return df[list(FEATURES)], df[TARGET].astype(str), digest


def make_pipeline(estimator, used: tuple[str, ...] = FEATURES) -> Pipeline:
    """Impute and scale the measurements, impute and one-hot the categories, then the estimator.

    Columns not in `used` are dropped, so every version accepts the same request schema.
    """
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value="unknown")),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    steps = [("num", numeric, [f for f in NUMERIC if f in used]), ("cat", categorical, [f for f in CATEGORICAL if f in used])]
    pre = ColumnTransformer([step for step in steps if step[2]], remainder="drop")
    return Pipeline([("preprocess", pre), ("model", estimator)])


def evaluate(pipeline: Pipeline, X: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    """Holdout metrics: accuracy, macro F1 (classes are unbalanced) and log loss."""
    proba = pipeline.predict_proba(X)
    pred = pipeline.classes_[np.argmax(proba, axis=1)]
    return {
        "accuracy": round(float(accuracy_score(y, pred)), 4),
        "f1_macro": round(float(f1_score(y, pred, average="macro")), 4),
        "log_loss": round(float(log_loss(y, proba, labels=pipeline.classes_)), 4),
    }


def train_version(version: str, X_train, y_train, X_test, y_test) -> tuple[Pipeline, dict]:
    """Fit one version and return it with the metadata stored beside it."""
    algorithm, factory, params, used = VERSION_SPECS[version]
    pipeline = make_pipeline(factory(**params), used).fit(X_train, y_train)
    metadata = {
        "algorithm": algorithm,
        "hyperparameters": params,
        "features": list(FEATURES),
        "features_used": list(used),
        "feature_types": {f: ("categorical" if f in CATEGORICAL else "numeric") for f in FEATURES},
        "classes": [str(c) for c in pipeline.classes_],
        "holdout_metrics": evaluate(pipeline, X_test, y_test),
        "train_rows": int(len(X_train)),
        "holdout_rows": int(len(X_test)),
        "split": {"holdout_fraction": HOLDOUT, "seed": SEED, "stratified": True},
        "library_versions": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "pandas": pd.__version__,
            "numpy": np.__version__,
            "bentoml": bentoml.__version__,
        },
    }
    return pipeline, metadata


def existing(tag: str):
    """The model in the store under this tag, or None."""
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return None


def save_version(version: str, pipeline: Pipeline, metadata: dict, data_hash: str, force: bool) -> str:
    """Save to the model store (skip when already there from the same data; replace only with --force)."""
    tag = f"{MODEL_NAME}:{version}"
    found = existing(tag)
    if found is not None and not force:
        if found.info.labels.get("data_sha256") != data_hash[:16]:
            raise SystemExit(f"error: {tag} exists but was trained on other data; run with --force to replace it")
        return "kept"
    if found is not None:
        bentoml.models.delete(tag)
    labels = {
        "stage": "stable" if version == STABLE_VERSION else "candidate",
        "algorithm": metadata["algorithm"],
        "data_sha256": data_hash[:16],
    }
    with bentoml.models.create(tag, labels=labels, metadata={**metadata, "data_sha256": data_hash}) as model:
        joblib.dump(pipeline, model.path_of(MODEL_FILE))
    return "replaced" if found is not None else "saved"


def export(version: str, export_dir: Path = EXPORT_DIR) -> Path:
    """Export the stored model to models/ so `bentoml models import` can load it elsewhere."""
    export_dir.mkdir(parents=True, exist_ok=True)
    path = export_dir / f"{MODEL_NAME}-{version}.bentomodel"
    tmp = path.with_suffix(".tmp.bentomodel")
    tmp.unlink(missing_ok=True)
    bentoml.models.export_model(f"{MODEL_NAME}:{version}", str(tmp))
    tmp.replace(path)
    return path


def shorter(path: Path) -> Path:
    """The path relative to the current folder when it lies below it."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train both model versions into the BentoML model store.")
    parser.add_argument("--force", action="store_true", help="replace versions that already exist in the store")
    parser.add_argument("--export-dir", type=Path, default=EXPORT_DIR, help="where to export the archives")
    parser.add_argument("--no-export", action="store_true", help="skip exporting the archives")
    parser.add_argument("--write-data", action="store_true", help="rewrite data/data.csv from palmerpenguins")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.write_data:
        write_data()
        return
    X, y, data_hash = load_data()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=HOLDOUT, stratify=y, random_state=SEED)
    print(f"data: {DATA.name} ({len(X)} rows, sha256 {data_hash[:12]}), holdout {len(X_test)} rows")
    rows = []
    for version in VERSION_SPECS:
        pipeline, metadata = train_version(version, X_train, y_train, X_test, y_test)
        action = save_version(version, pipeline, metadata, data_hash, args.force)
        stored = bentoml.models.get(f"{MODEL_NAME}:{version}").info.metadata["holdout_metrics"]
        exported = "" if args.no_export else shorter(export(version, args.export_dir))
        rows.append((version, metadata["algorithm"], stored, action, exported))
    print(f"{'version':<8}  {'algorithm':<31} {'accuracy':>8} {'f1_macro':>8} {'log_loss':>8}  store     export")
    for version, algorithm, m, action, exported in rows:
        print(
            f"{version:<8}  {algorithm:<31} {m['accuracy']:>8.4f} {m['f1_macro']:>8.4f} {m['log_loss']:>8.4f}"
            f"  {action:<8}  {exported}"
        )


if __name__ == "__main__":
    sys.exit(main())
