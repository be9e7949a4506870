"""Train one version of the diabetes progression regressor and save it to the BentoML model store.

python train.py                                        # ridge regression on every feature
python train.py --algorithm gradient_boosting
python train.py --algorithm ridge --features age
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, root_mean_squared_error
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

MODEL_NAME = "diabetes_regressor"
FEATURES = list(load_diabetes().feature_names)  # age, sex, bmi, bp, s1 ... s6
ALGORITHMS = {
    "ridge": lambda alpha: Ridge(alpha=alpha),
    "gradient_boosting": lambda alpha: GradientBoostingRegressor(
        n_estimators=100, max_depth=2, learning_rate=0.05, random_state=0
    ),
    "random_forest": lambda alpha: RandomForestRegressor(n_estimators=100, min_samples_leaf=5, random_state=0),
}
TEST_SIZE = 0.25
SEED = 0


def dataset() -> tuple[np.ndarray, np.ndarray]:
    """Every patient's 10 measurements, unscaled (columns in FEATURES' order), and their progression score."""
    data = load_diabetes(scaled=False)
    return data.data, data.target


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """X_train, X_test, y_train, y_test: the same hold-out split for every version."""
    x, y = dataset()
    return train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED)


def recipe(algorithm: str, features: list[str], alpha: float = 1.0) -> Pipeline:
    """A pipeline that takes all 10 columns, keeps `features`, scales them and regresses (alpha: ridge's penalty)."""
    keep = ColumnTransformer([("keep", "passthrough", [FEATURES.index(name) for name in features])])
    return Pipeline([("features", keep), ("scale", StandardScaler()), ("model", ALGORITHMS[algorithm](alpha))])


def fit(algorithm: str, features: list[str], alpha: float = 1.0) -> tuple[Pipeline, dict]:
    """The recipe trained on the training split, and its errors on the hold-out split."""
    x_train, x_test, y_train, y_test = split()
    model = recipe(algorithm, features, alpha).fit(x_train, y_train)
    predicted = model.predict(x_test)
    metrics = {
        "holdout_mae": round(float(mean_absolute_error(y_test, predicted)), 3),
        "holdout_rmse": round(float(root_mean_squared_error(y_test, predicted)), 3),
        "train_rows": len(y_train),
        "holdout_rows": len(y_test),
    }
    return model, metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="ridge")
    parser.add_argument("--features", nargs="+", choices=FEATURES, default=FEATURES, metavar="FEATURE")
    parser.add_argument("--alpha", type=float, default=1.0, help="ridge's regularisation strength")
    args = parser.parse_args(argv)

    import bentoml

    model, metrics = fit(args.algorithm, args.features, args.alpha)
    metadata = {"algorithm": args.algorithm, "features": args.features, "alpha": args.alpha, "metrics": metrics}
    saved = bentoml.sklearn.save_model(MODEL_NAME, model, labels={"algorithm": args.algorithm}, metadata=metadata)
    print(f"{saved.tag} {args.algorithm} on {len(args.features)} feature(s): {metrics}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
