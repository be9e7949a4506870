"""Training recipes: which estimator, hyper-parameters and features make each model version.

A declared version (RECIPES) is reproducible: the same data, split and seeds give the same model. A new version
needs no code edit: `python train_model.py --version v1.3.0 --algorithm hist_gradient_boosting` trains that
algorithm with its default hyper-parameters below (change them with `--param name=value`).

Training only: the service never imports this module (it would pull scikit-learn into the ONNX runtime path).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from penguin.features import (
    CANDIDATE_VERSION,
    CATEGORICAL,
    FEATURES,
    NUMERIC,
    STABLE_VERSION,
    VERSION_PATTERN,
)

SEED = 42
MISSING_CATEGORY = "unknown"  # what the category imputer writes for a missing island or sex

# name on the command line -> (estimator class, default hyper-parameters). Each has an exact ONNX converter
# (penguin/onnx_export.py); an algorithm without one could not pass the parity gate, so it is not offered.
ALGORITHMS: dict[str, tuple[type, dict]] = {
    "logistic_regression": (LogisticRegression, {"C": 1.0, "max_iter": 2000}),
    "hist_gradient_boosting": (
        HistGradientBoostingClassifier,
        {"max_iter": 60, "learning_rate": 0.1, "max_depth": 3, "l2_regularization": 1.0, "random_state": SEED},
    ),
    "random_forest": (
        RandomForestClassifier,
        {"n_estimators": 100, "max_depth": 5, "min_samples_leaf": 2, "random_state": SEED},
    ),
}


@dataclass(frozen=True)
class Recipe:
    """One model version's recipe: an algorithm from ALGORITHMS, its hyper-parameters, the features it learns from."""

    algorithm: str
    params: dict = field(default_factory=dict)
    features: tuple[str, ...] = FEATURES

    @property
    def estimator_name(self) -> str:
        return ALGORITHMS[self.algorithm][0].__name__

    def pipeline(self) -> Pipeline:
        """A fresh, unfitted pipeline: shared preprocessing, then this recipe's estimator."""
        return make_pipeline(ALGORITHMS[self.algorithm][0](**self.params), self.features)

    def describe(self) -> dict:
        return {"algorithm": self.algorithm, "params": self.params, "features": list(self.features)}


# The declared versions. v1.0.0 (stable) sees the four body measurements; v1.1.0 adds island and sex and boosted
# trees; v1.2.0 is a bagged forest of shallow trees on every feature (averaged votes, no boosting).
RECIPES: dict[str, Recipe] = {
    STABLE_VERSION: Recipe("logistic_regression", {"C": 0.5, "max_iter": 2000}, NUMERIC),
    CANDIDATE_VERSION: Recipe("hist_gradient_boosting", ALGORITHMS["hist_gradient_boosting"][1], FEATURES),
    "v1.2.0": Recipe("random_forest", ALGORITHMS["random_forest"][1], FEATURES),
}
DEFAULT_VERSIONS = (STABLE_VERSION, CANDIDATE_VERSION)  # what plain `python train_model.py` trains


def make_pipeline(estimator, used: tuple[str, ...] = FEATURES) -> Pipeline:
    """Impute and scale the measurements, impute and one-hot the categories, then the estimator.

    Columns not in `used` are dropped, so every version accepts the same request schema.
    """
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    steps = [
        ("num", numeric, [f for f in NUMERIC if f in used]),
        ("cat", categorical, [f for f in CATEGORICAL if f in used]),
    ]
    pre = ColumnTransformer([step for step in steps if step[2]], remainder="drop")
    return Pipeline([("preprocess", pre), ("model", estimator)])


def parse_param(text: str) -> tuple[str, object]:
    """`name=value` from the command line; the value as JSON when it parses (numbers, true/false, null), else text."""
    name, sep, raw = text.partition("=")
    if not sep or not name.isidentifier():
        raise ValueError(f"--param wants name=value, got {text!r}")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def recipe_for(
    version: str, algorithm: str | None = None, params: dict | None = None, features: tuple[str, ...] | None = None
) -> Recipe:
    """The recipe to train `version` from, or ValueError with a one-line reason.

    A declared version takes its recipe from RECIPES (an --algorithm must agree; nothing may change it). Any other
    version needs --algorithm and starts from that algorithm's defaults.
    """
    if not re.fullmatch(VERSION_PATTERN, version):
        raise ValueError(f"bad version {version!r}: use vMAJOR.MINOR.PATCH, e.g. v1.3.0")
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of: {', '.join(sorted(ALGORITHMS))}")
    unknown = sorted(set(features or ()) - set(FEATURES))
    if unknown or (features is not None and not features):
        raise ValueError(f"unknown features {unknown or '(none given)'}; choose from: {', '.join(FEATURES)}")
    declared = RECIPES.get(version)
    if declared is not None:
        if (algorithm not in (None, declared.algorithm)) or params or features:
            raise ValueError(
                f"{version} is declared in penguin/recipes.py as {declared.algorithm}; train a new version to change it"
            )
        return declared
    if algorithm is None:
        raise ValueError(
            f"{version} is not a declared recipe ({', '.join(RECIPES)}): say how to make it with --algorithm "
            f"({', '.join(sorted(ALGORITHMS))})"
        )
    cls, defaults = ALGORITHMS[algorithm]
    merged = {**defaults, **(params or {})}
    try:
        cls(**merged)._validate_params()  # names and values, as fit() would check them, before any training
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad --param for {algorithm}: {exc}") from None
    chosen = tuple(f for f in FEATURES if f in features) if features else FEATURES
    return Recipe(algorithm, merged, chosen)
