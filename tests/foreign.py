"""Two BentoML services that are not the kit's (tests/services/): each version trained and built into a Bento once,
request bodies made from the datasets' rows, and what each version predicts offline for given rows.

Each service has three versions by role: `baseline` (blue), `good` (a different good model) and `worse` (a clearly
worse one). The wine Bentos carry explicit versions (1.0.0 ...); the diabetes Bentos carry the versions BentoML
generates. Their services load `name:latest`, which `bentoml build` records in the Bento (bento.yaml), but which
`bentoml serve NAME:VERSION` resolves again in the model store at start-up: every Bento served by tag from the store
serves the newest model. A Bento exported as a folder (`exported`) carries its own model, and `bentoml serve FOLDER`
serves that one, as its container does.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

SERVICES = Path(__file__).resolve().parent / "services"
BIN = Path(sys.executable).parent
ROLES = ("baseline", "good", "worse")


@dataclass(frozen=True)
class Recipe:
    """How one role's version is trained (train.py's options) and the Bento version it is built as (None: BentoML's)."""

    train: tuple[str, ...]
    version: str | None


@dataclass(frozen=True)
class Spec:
    """What the tests know of a service from reading its folder: nothing here is imported from it but train.py."""

    folder: str
    service_name: str  # the Bento's name (service.py's @bentoml.service name)
    model_name: str
    task: str  # classification or regression
    endpoint: str
    predictions_path: str  # where an answer holds its predictions (a JSON path)
    rows_per_body: int | None  # None: a list of rows per request
    recipes: dict[str, Recipe]


SPECS = {
    "wine": Spec(
        folder="wine",
        service_name="wine_cultivar",
        model_name="wine_classifier",
        task="classification",
        endpoint="/classify",
        predictions_path="$.labels[*]",
        rows_per_body=None,
        recipes={
            "baseline": Recipe((), "1.0.0"),  # logistic regression on all 13 features
            "good": Recipe(("--algorithm", "k_neighbors"), "1.1.0"),  # as fast as the baseline: HTTP gates pass
            "worse": Recipe(("--features", "ash"), "1.2.0"),  # one weak feature: never predicts class_2
        },
    ),
    "diabetes": Spec(
        folder="diabetes",
        service_name="diabetes_progression",
        model_name="diabetes_regressor",
        task="regression",
        endpoint="/predict",
        predictions_path="$.progression",
        rows_per_body=1,
        recipes={
            "baseline": Recipe((), None),  # ridge regression on all 10 features
            "good": Recipe(("--algorithm", "gradient_boosting"), None),
            "worse": Recipe(("--features", "age"), None),  # age alone: predictions bunched near the mean
        },
    ),
}


@cache
def train_module(folder: str) -> ModuleType:
    """A service's train.py (its dataset, hold-out split and feature order), imported from its file."""
    path = SERVICES / folder / "train.py"
    spec = importlib.util.spec_from_file_location(f"foreign_train_{folder}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def _stored_model(task: str, model_tag: str) -> Any:
    """A version's fitted pipeline from the model store, loaded as its service loads it."""
    import bentoml

    if task == "classification":
        import joblib

        return joblib.load(bentoml.models.get(model_tag).path_of("model.pkl"))
    return bentoml.sklearn.load_model(model_tag)


@dataclass(frozen=True)
class ForeignService:
    """One service's three Bentos and the means to question them."""

    spec: Spec
    versions: dict[str, str]  # role -> Bento version
    models: dict[str, str]  # role -> the model tag its Bento holds
    exported: dict[str, Path]  # role -> the Bento exported as a folder, its model inside
    build_seconds: float = 0.0
    train: ModuleType = field(init=False, repr=False, compare=False)  # the service's train.py

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", train_module(self.spec.folder))

    @property
    def folder(self) -> Path:
        return SERVICES / self.spec.folder

    @property
    def name(self) -> str:
        return self.spec.service_name

    def project_copy(self, dest: Path) -> Path:
        """A copy of the service's folder in `dest`, for a test that writes into the project (e.g. `canary init`)."""
        return Path(shutil.copytree(self.folder, dest / self.spec.folder, ignore=shutil.ignore_patterns("__pycache__")))

    def tag(self, role: str) -> str:
        return f"{self.name}:{self.versions[role]}"

    @property
    def features(self) -> list[str]:
        return list(self.train.FEATURES)

    def rows(self, count: int, seed: int, holdout: bool = True) -> tuple[list[dict], list]:
        """`count` rows drawn with `seed` (from the hold-out split by default; with replacement past its size), as
        the service names their fields, and each row's true label (a class name or a progression score)."""
        if holdout:
            _, x, _, y = self.train.split()
        else:
            x, y = self.train.dataset()
        picked = np.random.default_rng(seed).choice(len(y), size=count, replace=count > len(y))
        rows = [dict(zip(self.features, x[i].tolist())) for i in picked]
        return rows, y[picked].tolist()

    def holdout(self) -> tuple[list[dict], list]:
        """Every row of the hold-out split, in order, and their true labels."""
        _, x, _, y = self.train.split()
        return [dict(zip(self.features, r)) for r in x.tolist()], y.tolist()

    def body(self, rows: list[dict]) -> dict:
        """The request body that asks for these rows' predictions (the diabetes service takes one row)."""
        if self.spec.rows_per_body == 1:
            assert len(rows) == 1, "the diabetes service predicts one row per request"
            return {"input_data": rows[0]}
        return {"wines": rows}

    def bodies(self, count: int, seed: int, rows_per_request: int = 1, holdout: bool = True) -> list[tuple[dict, list]]:
        """`count` request bodies of `rows_per_request` sampled rows each, with their rows' true labels."""
        if self.spec.rows_per_body == 1:
            rows_per_request = 1
        rows, truth = self.rows(count * rows_per_request, seed, holdout)
        step = rows_per_request
        return [(self.body(rows[i : i + step]), truth[i : i + step]) for i in range(0, len(rows), step)]

    def predictions(self, answer: dict) -> list:
        """The predictions an answer holds, in its rows' order (what `predictions_path` selects)."""
        return list(answer["labels"]) if self.spec.task == "classification" else [answer["progression"]]

    def offline(self, role: str, rows: list[dict]) -> list:
        """What `role`'s version predicts for these rows, computed here from its model in the store."""
        model = _stored_model(self.spec.task, self.models[role])
        x = np.array([[row[name] for name in self.features] for row in rows], dtype=float)
        return model.predict(x).tolist()

    def offline_scores(self, role: str, rows: list[dict]) -> list[list[float]]:
        """The classifier's class probabilities for these rows (in the order of its classes)."""
        model = _stored_model(self.spec.task, self.models[role])
        x = np.array([[row[name] for name in self.features] for row in rows], dtype=float)
        return model.predict_proba(x).tolist()


def _run(argv: list[str], cwd: Path) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{argv} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def build(spec: Spec, exports: Path, log: Callable[[str], None] = print) -> ForeignService:
    """Train each role's version and build its Bento right after (the service loads `:latest`: order matters), then
    export each Bento as a folder. The store is the one BENTOML_HOME names."""
    import bentoml

    started = time.monotonic()
    folder = SERVICES / spec.folder
    versions, models, exported = {}, {}, {}
    for role in ROLES:
        recipe = spec.recipes[role]
        log(_run([sys.executable, "train.py", *recipe.train], folder).strip())
        version = ["--version", recipe.version] if recipe.version else []
        out = _run([str(BIN / "bentoml"), "build", *version, "-o", "tag"], folder)
        tag = next(line for line in out.splitlines() if line.startswith("__tag__:")).removeprefix("__tag__:")
        name, versions[role] = tag.split(":")
        assert name == spec.service_name, (name, spec.service_name)
        (model,) = bentoml.get(tag).info.all_models
        models[role] = str(model.tag)
        exported[role] = Path(bentoml.bentos.export_bento(tag, str(exports / f"{name}-{versions[role]}"), "folder"))
    return ForeignService(spec, versions, models, exported, time.monotonic() - started)


def prepare(exports: Path, log: Callable[[str], None] = print) -> dict[str, ForeignService]:
    """Both services, each with its three Bentos built (baseline, good, worse, in that order). The two services
    build side by side: each step is a process of its own, most of it spent starting Python and importing."""
    with ThreadPoolExecutor(max_workers=len(SPECS)) as pool:
        futures = {key: pool.submit(build, spec, exports, log) for key, spec in SPECS.items()}
        return {key: future.result() for key, future in futures.items()}
