"""Train model versions of the penguin classifier, each with an exact ONNX graph, into the BentoML model store.

    python train_model.py                                         # v1.0.0 (stable) and v1.1.0 (candidate)
    python train_model.py --version v1.2.0                        # a recipe declared in penguin/recipes.py
    python train_model.py --version v1.3.0 --algorithm hist_gradient_boosting --param max_iter=100
    python train_model.py --force                                 # replace versions that already exist
    python train_model.py --write-data                            # (maintainers) rewrite data/data.csv

Each version is a scikit-learn Pipeline (penguin/recipes.py: shared preprocessing, the version's estimator) fitted
on a fixed stratified split with fixed seeds, so running this twice gives the same models. The pipeline stays the
source of truth; its ONNX graph (penguin/onnx_export.py) is saved next to it in the same BentoML model only if
it answers like the pipeline on every data row and on the generated rows (penguin/parity.py): no probability
further than 1e-6, no class different. The figures go into the model's metadata.
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
from sklearn.metrics import accuracy_score, f1_score, log_loss
from sklearn.model_selection import train_test_split

from penguin import onnx_export, parity
from penguin.features import CATEGORICAL, FEATURES, MODEL_NAME, STABLE_VERSION, TARGET
from penguin.predictor import ONNX_FILE, PIPELINE_FILE, OnnxPredictor
from penguin.recipes import DEFAULT_VERSIONS, SEED, Recipe, parse_param, recipe_for

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data" / "data.csv"
EXPORT_DIR = ROOT / "models"
HOLDOUT = 0.25


class Refused(Exception):
    """A version that must not be saved, or a request that cannot be met: one line for the user (exit code 1)."""

    exit_code = 1


class Unsupported(Refused):
    """A recipe this tool cannot make: no exact float64 ONNX graph for its options. A bad request (exit code 2)."""

    exit_code = 2


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


def evaluate(pipeline, X: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    """Holdout metrics: accuracy, macro F1 (classes are unbalanced) and log loss."""
    proba = pipeline.predict_proba(X)
    pred = pipeline.classes_[np.argmax(proba, axis=1)]
    return {
        "accuracy": round(float(accuracy_score(y, pred)), 4),
        "f1_macro": round(float(f1_score(y, pred, average="macro")), 4),
        "log_loss": round(float(log_loss(y, proba, labels=pipeline.classes_)), 4),
    }


def storable(value):
    """A value BentoML's metadata accepts: None (e.g. max_depth=None) is stored as the string "None"."""
    if isinstance(value, dict):
        return {k: storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    return "None" if value is None else value


def library_versions() -> dict[str, str]:
    import google.protobuf
    import onnx
    import onnxruntime
    import skl2onnx

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "pandas": pd.__version__,
        "numpy": np.__version__,
        "bentoml": bentoml.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "protobuf": google.protobuf.__version__,
    }


def train_version(version: str, recipe: Recipe, split: tuple, data_rows: list[dict]) -> tuple[object, bytes, dict]:
    """Fit one version, export its graph and check it; return the pipeline, the graph and the stored metadata."""
    X_train, X_test, y_train, y_test = split
    try:
        pipeline = recipe.pipeline().fit(X_train, y_train)
    except ValueError as exc:  # e.g. a --param value the estimator rejects
        raise Refused(f"{version} ({recipe.algorithm}) could not be trained: {str(exc).splitlines()[0]}") from None
    try:
        graph = onnx_export.to_onnx(pipeline, recipe.features)
    except onnx_export.NotExportable as exc:
        raise Unsupported(f"{version} ({recipe.algorithm}) has no exact float64 ONNX graph: {exc}") from None
    check = onnx_parity(pipeline, graph, data_rows)
    if not check["ok"]:
        raise Refused(
            f"{version} not saved: its ONNX graph answers differently from scikit-learn: "
            f"{parity.summary(check)} {check['first_mismatches']}"
        )
    metadata = {
        "algorithm": recipe.estimator_name,
        "recipe": storable(recipe.describe()),
        "hyperparameters": storable(recipe.params),
        "features": list(FEATURES),
        "features_used": list(recipe.features),
        "feature_types": {f: ("categorical" if f in CATEGORICAL else "numeric") for f in FEATURES},
        "classes": [str(c) for c in pipeline.classes_],
        "holdout_metrics": evaluate(pipeline, X_test, y_test),
        "train_rows": int(len(X_train)),
        "holdout_rows": int(len(X_test)),
        "split": {"holdout_fraction": HOLDOUT, "seed": SEED, "stratified": True},
        "files": {"pipeline": PIPELINE_FILE, "onnx": ONNX_FILE},
        "onnx": {
            "inputs": [name for name, _ in onnx_export.input_types(recipe.features)],
            "outputs": ["label", "probabilities"],
            "dtype": "float64",
            "missing_category": onnx_export.MISSING_SENTINEL,
            "parity": check,
        },
        "library_versions": library_versions(),
    }
    return pipeline, graph, metadata


def onnx_parity(pipeline, graph: bytes, data_rows: list[dict]) -> dict:
    """The graph against the pipeline on every data row and the generated rows (penguin/parity.py)."""
    generated = parity.generated_rows(pipeline, data_rows)
    rows = data_rows + generated
    classes = [str(c) for c in pipeline.classes_]
    got = OnnxPredictor(graph, classes).predict_proba(parity.columns_of(rows))
    result = parity.compare(parity.reference(pipeline, rows), got, classes)
    return {**result, "data_rows": len(data_rows), "generated_rows": len(generated), "seed": parity.SEED}


def existing(tag: str):
    """The model in the store under this tag, or None."""
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return None


def keep_or_refuse(found, recipe: Recipe, data_hash: str) -> None:
    """An existing version is kept only if it is what this run would make; otherwise say why, in one line."""
    tag = str(found.tag)
    if found.info.labels.get("data_sha256") != data_hash[:16]:
        raise Refused(f"{tag} exists but was trained on other data; run with --force to replace it")
    stored = found.info.metadata.get("recipe")
    if stored is not None and stored != storable(recipe.describe()):
        raise Refused(
            f"{tag} exists with another recipe ({stored['algorithm']}); run with --force to replace it "
            "or train a new version"
        )
    if not Path(found.path_of(ONNX_FILE)).is_file():
        raise Refused(
            f"{tag} exists without an ONNX graph (trained before the graph was added); run with --force to replace it"
        )


def save_version(version: str, pipeline, graph: bytes, metadata: dict, data_hash: str, replace: bool) -> str:
    """Save the pipeline and its graph as one BentoML model (replacing the stored one if `replace`)."""
    tag = f"{MODEL_NAME}:{version}"
    if replace:
        bentoml.models.delete(tag)
    labels = {
        "stage": "stable" if version == STABLE_VERSION else "candidate",
        "algorithm": metadata["algorithm"],
        "data_sha256": data_hash[:16],
    }
    with bentoml.models.create(tag, labels=labels, metadata={**metadata, "data_sha256": data_hash}) as model:
        joblib.dump(pipeline, model.path_of(PIPELINE_FILE))
        Path(model.path_of(ONNX_FILE)).write_bytes(graph)
    return "replaced" if replace else "saved"


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
    parser = argparse.ArgumentParser(description="Train model versions into the BentoML model store.")
    parser.add_argument("--version", help="train this version only (default: v1.0.0 and v1.1.0)")
    parser.add_argument(
        "--algorithm",
        help="for a new version: logistic_regression, hist_gradient_boosting "
        "or random_forest (a declared version already has one)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="for a new version: a hyper-parameter of the algorithm (repeatable)",
    )
    parser.add_argument("--features", help="for a new version: comma-separated features to learn from (default: all)")
    parser.add_argument("--force", action="store_true", help="replace versions that already exist in the store")
    parser.add_argument("--export-dir", type=Path, default=EXPORT_DIR, help="where to export the archives")
    parser.add_argument("--no-export", action="store_true", help="skip exporting the archives")
    parser.add_argument("--write-data", action="store_true", help="rewrite data/data.csv from palmerpenguins")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> dict[str, Recipe]:
    """The versions to train and their recipes, or ValueError naming what is wrong."""
    if args.version is None:
        if args.algorithm or args.param or args.features:
            raise ValueError("--algorithm, --param and --features describe a new version: add --version vX.Y.Z")
        return {v: recipe_for(v) for v in DEFAULT_VERSIONS}
    params = dict(parse_param(p) for p in args.param)
    features = tuple(f.strip() for f in args.features.split(",")) if args.features is not None else None
    return {args.version: recipe_for(args.version, args.algorithm, params, features)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_data:
        write_data()
        return 0
    try:
        recipes = plan(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    X, y, data_hash = load_data()
    split = train_test_split(X, y, test_size=HOLDOUT, stratify=y, random_state=SEED)
    data_rows = parity.data_rows(DATA)
    print(f"data: {DATA.name} ({len(X)} rows, sha256 {data_hash[:12]}), holdout {len(split[1])} rows")
    rows = []
    try:
        for version, recipe in recipes.items():
            found = existing(f"{MODEL_NAME}:{version}")
            if found is not None and not args.force:
                keep_or_refuse(found, recipe, data_hash)
                action = "kept"
            else:
                pipeline, graph, metadata = train_version(version, recipe, split, data_rows)
                action = save_version(version, pipeline, graph, metadata, data_hash, replace=found is not None)
            stored = bentoml.models.get(f"{MODEL_NAME}:{version}").info.metadata
            exported = "" if args.no_export else shorter(export(version, args.export_dir))
            rows.append((version, stored, action, exported))
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(
        f"{'version':<8}  {'algorithm':<31} {'accuracy':>8} {'f1_macro':>8} {'log_loss':>8}  {'onnx max|dp|':>12}"
        "  store     export"
    )
    for version, meta, action, exported in rows:
        m, check = meta["holdout_metrics"], meta["onnx"]["parity"]
        print(
            f"{version:<8}  {meta['algorithm']:<31} {m['accuracy']:>8.4f} {m['f1_macro']:>8.4f} "
            f"{m['log_loss']:>8.4f}  {check['max_abs_prob_diff']:>12.1e}  {action:<8}  {exported}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
