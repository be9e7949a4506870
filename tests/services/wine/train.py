"""Train one version of the wine classifier and save it to the BentoML model store as `wine_classifier`.

python train.py                                        # logistic regression on every feature
python train.py --algorithm k_neighbors
python train.py --algorithm logistic_regression --features ash
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

MODEL_NAME = "wine_classifier"
# The service's field names: scikit-learn's, with the one that is not an identifier renamed.
FEATURES = [name.replace("/", "_") for name in load_wine().feature_names]
ALGORITHMS = {
    "logistic_regression": lambda: LogisticRegression(max_iter=1000),
    "random_forest": lambda: RandomForestClassifier(n_estimators=100, random_state=0),
    "k_neighbors": lambda: KNeighborsClassifier(n_neighbors=10),
}
TEST_SIZE = 0.3
SEED = 0


def dataset() -> tuple[np.ndarray, np.ndarray]:
    """Every wine's 13 features (columns in FEATURES' order) and its class name (class_0, class_1, class_2)."""
    data = load_wine()
    return data.data, data.target_names[data.target]


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """X_train, X_test, y_train, y_test: the same stratified hold-out split for every version."""
    x, y = dataset()
    return train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y)


def recipe(algorithm: str, features: list[str]) -> Pipeline:
    """A pipeline that takes all 13 columns, keeps `features`, scales them and classifies."""
    keep = ColumnTransformer([("keep", "passthrough", [FEATURES.index(name) for name in features])])
    return Pipeline([("features", keep), ("scale", StandardScaler()), ("model", ALGORITHMS[algorithm]())])


def fit(algorithm: str, features: list[str]) -> tuple[Pipeline, dict]:
    """The recipe trained on the training split, and its metrics on the hold-out split."""
    x_train, x_test, y_train, y_test = split()
    model = recipe(algorithm, features).fit(x_train, y_train)
    metrics = {
        "holdout_accuracy": round(float(accuracy_score(y_test, model.predict(x_test))), 4),
        "train_rows": len(y_train),
        "holdout_rows": len(y_test),
    }
    return model, metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="logistic_regression")
    parser.add_argument("--features", nargs="+", choices=FEATURES, default=FEATURES, metavar="FEATURE")
    args = parser.parse_args(argv)

    import bentoml
    import joblib

    model, metrics = fit(args.algorithm, args.features)
    metadata = {"algorithm": args.algorithm, "features": args.features, "metrics": metrics}
    with bentoml.models.create(MODEL_NAME, labels={"algorithm": args.algorithm}, metadata=metadata) as stored:
        joblib.dump(model, stored.path_of("model.pkl"))
    print(f"{stored.tag} {args.algorithm} on {len(args.features)} feature(s): {metrics}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
