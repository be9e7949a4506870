"""train_model.py makes a version from a declared recipe or from --algorithm, keeps what exists, refuses in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, bentoml_serve, run
from penguin.features import FEATURES, MODEL_NAME
from penguin.recipes import ALGORITHMS

V12 = "v1.2.0"
TRAIN_V12 = [sys.executable, "train_model.py", "--version", V12, "--algorithm", "random_forest"]


def train(argv: list[str], home, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_HOME": str(home)}
    if check:
        return run([sys.executable, "train_model.py", *argv, "--no-export"], env=env)
    return subprocess.run(
        [sys.executable, "train_model.py", *argv, "--no-export"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


REFUSED = {
    "bad version": (["--version", "1.2"], "bad version '1.2'"),
    "unknown algorithm": (["--version", "v1.3.0", "--algorithm", "xgboost"], "unknown algorithm 'xgboost'"),
    "declared with another algorithm": (["--version", V12, "--algorithm", "logistic_regression"], "declared"),
    "new version without algorithm": (["--version", "v1.3.0"], "--algorithm"),
    "algorithm without version": (["--algorithm", "random_forest"], "--version"),
    "unknown hyper-parameter": (
        ["--version", "v1.3.0", "--algorithm", "random_forest", "--param", "colour=1"],
        "colour",
    ),
    "out-of-range hyper-parameter": (
        ["--version", "v1.3.0", "--algorithm", "logistic_regression", "--param", "C=-1"],
        "'C' parameter",
    ),
    "unknown feature": (["--version", "v1.3.0", "--algorithm", "random_forest", "--features", "beak"], "beak"),
    "no exact graph (native categorical splits)": (
        [
            "--version",
            "v1.3.0",
            "--algorithm",
            "hist_gradient_boosting",
            "--param",
            "categorical_features=[0]",
            "--features",
            "island,bill_depth_mm",
        ],
        "no exact float64 ONNX graph",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_requests_are_refused_in_one_line(case, tmp_path):
    argv, named = REFUSED[case]
    done = train(argv, tmp_path, check=False)
    assert done.returncode == 2, (case, done.returncode, done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and named in done.stderr, done.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("model.yaml"))


@pytest.fixture(scope="module")
def v12_home(tmp_path_factory):
    """v1.2.0 trained alone, with the exact command the README gives, in a store of its own."""
    home = tmp_path_factory.mktemp("v12-home")
    done = run(TRAIN_V12 + ["--no-export"], env={**os.environ, "BENTOML_HOME": str(home)})
    print(done.stdout)
    return home


def metadata(home, version: str) -> dict:
    out = run(
        [
            sys.executable,
            "-c",
            "import bentoml, json, sys; m = bentoml.models.get(sys.argv[1]); "
            "print(json.dumps({'meta': m.info.metadata, 'labels': m.info.labels}, default=str))",
            f"{MODEL_NAME}:{version}",
        ],
        env={**os.environ, "BENTOML_HOME": str(home)},
    )
    return json.loads(out.stdout)


def test_v1_2_0_is_a_random_forest_that_passes_the_gate(v12_home, trained):
    import bentoml

    found = metadata(v12_home, V12)
    meta = found["meta"]
    assert meta["algorithm"] == "RandomForestClassifier" and meta["recipe"]["algorithm"] == "random_forest"
    assert found["labels"]["stage"] == "candidate"
    figures = meta["onnx"]["parity"]
    print(f"\nv1.2.0 parity: {figures['rows']} rows, max |dp| {figures['max_abs_prob_diff']:.1e}")
    assert figures["ok"] and figures["generated_rows"] >= 10_000, figures
    others = {v: bentoml.models.get(f"{MODEL_NAME}:{v}").info.metadata["algorithm"] for v in ("v1.0.0", "v1.1.0")}
    assert meta["algorithm"] not in others.values(), others


def test_v1_2_0_answers_differ_from_both_earlier_versions(v12_home, trained):
    import bentoml
    import joblib
    import numpy as np
    import pandas as pd

    rows = pd.read_csv(ROOT / "data" / "data.csv").drop(columns="target")
    forest = joblib.load(v12_home / "models" / MODEL_NAME / V12 / "model.joblib").predict_proba(rows)
    for version in ("v1.0.0", "v1.1.0"):
        other = joblib.load(bentoml.models.get(f"{MODEL_NAME}:{version}").path_of("model.joblib")).predict_proba(rows)
        gap = float(np.abs(forest - other).max())
        print(f"\nv1.2.0 vs {version}: largest probability difference on the data {gap:.3f}")
        assert gap > 0.05, version


def test_v1_2_0_is_kept_and_replaced_only_with_force(v12_home):
    again = train(["--version", V12], v12_home)
    assert "kept" in again.stdout, again.stdout
    again = run(TRAIN_V12 + ["--no-export"], env={**os.environ, "BENTOML_HOME": str(v12_home)})
    assert "kept" in again.stdout, again.stdout
    forced = train(["--version", V12, "--force"], v12_home)
    assert "replaced" in forced.stdout, forced.stdout


def test_a_new_version_needs_no_code_edit(tmp_path):
    made = train(
        [
            "--version",
            "v2.0.0",
            "--algorithm",
            "hist_gradient_boosting",
            "--param",
            "max_iter=20",
            "--features",
            "bill_length_mm,flipper_length_mm,island",
        ],
        tmp_path,
    )
    assert "v2.0.0" in made.stdout and "saved" in made.stdout, made.stdout
    meta = metadata(tmp_path, "v2.0.0")["meta"]
    assert meta["hyperparameters"]["max_iter"] == 20
    assert meta["features_used"] == ["island", "bill_length_mm", "flipper_length_mm"]
    assert meta["onnx"]["parity"]["ok"], meta["onnx"]["parity"]
    other = train(
        ["--version", "v2.0.0", "--algorithm", "hist_gradient_boosting", "--param", "max_iter=30"],
        tmp_path,
        check=False,
    )
    assert other.returncode == 1 and "another recipe" in other.stderr and other.stderr.count("\n") == 1, other.stderr


@pytest.mark.integration
def test_v1_2_0_is_served_with_scikit_learn_s_answers(v12_home):
    import joblib

    from penguin import parity

    pipeline = joblib.load(v12_home / "models" / MODEL_NAME / V12 / "model.joblib")
    target = ["service:PenguinClassifier", "--arg", f"model_version={V12}"]
    with bentoml_serve(target, env={"BENTOML_HOME": str(v12_home)}) as url:
        result = parity.served_parity(url, pipeline, parity.data_rows(ROOT / "data" / "data.csv"))
    print(f"\nv1.2.0 served: {parity.summary(result)}")
    assert result["versions"] == [V12] and result["ok"], result


# Feature sets a new user tries: the categories alone (their one-hot columns were float32: the trees got float input
# against double splits, the logistic regression computed in float32), one of them, one measurement, measurements
# alone, one of each kind, everything. Every algorithm on each must give a float64 graph exact to float rounding.
FEATURE_SETS = (
    "island",
    "sex",
    "island,sex",
    "bill_depth_mm",
    "bill_length_mm,flipper_length_mm",
    "island,bill_depth_mm",
    "sex,body_mass_g",
    ",".join(FEATURES),
)
EXACT = 1e-12  # float64 throughout gives about 1e-15; one float32 step gives about 1e-8


@pytest.fixture(scope="module")
def training():
    """The split and data rows train_model.py uses, to train versions in this process (no store, no export)."""
    from sklearn.model_selection import train_test_split

    import train_model
    from penguin import parity

    X, y, _ = train_model.load_data()
    split = train_test_split(X, y, test_size=train_model.HOLDOUT, stratify=y, random_state=train_model.SEED)
    return split, parity.data_rows(train_model.DATA)


def train_here(version: str, algorithm: str, features: str, training) -> dict:
    import train_model
    from penguin.recipes import recipe_for

    recipe = recipe_for(version, algorithm, {}, tuple(features.split(",")))
    _, graph, meta = train_model.train_version(version, recipe, *training)
    return {"graph": graph, **meta}


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("features", FEATURE_SETS)
def test_every_feature_set_trains_an_exact_float64_graph(algorithm, features, training):
    import onnx

    from penguin import onnx_export

    made = train_here("v9.9.9", algorithm, features, training)
    figures = made["onnx"]["parity"]
    assert figures["max_abs_prob_diff"] <= EXACT and figures["class_mismatches"] == 0, figures
    assert onnx_export.float32_values(onnx.load_from_string(made["graph"])) == []


@pytest.mark.parametrize("features", ["island", "island,sex"])
@pytest.mark.parametrize("algorithm", ["hist_gradient_boosting", "logistic_regression"])
def test_the_recipes_that_once_failed_train_exact_graphs(algorithm, features, tmp_path):
    """On categories alone the trees once crashed in the export and the regression was 5.7e-08 off."""
    made = train(["--version", "v0.9.0", "--algorithm", algorithm, "--features", features], tmp_path)
    row = made.stdout.splitlines()[-1].split()
    assert row[0] == "v0.9.0" and row[-1] == "saved", made.stdout
    assert float(row[5]) <= EXACT, made.stdout


def test_a_clearly_weaker_model_needs_no_code_edit(training):
    """The weak green of the quality gates: a logistic regression on bill depth alone."""
    weak = train_here("v1.9.0", "logistic_regression", "bill_depth_mm", training)["holdout_metrics"]
    print(f"\nv1.9.0 (bill depth alone): {weak}")
    assert weak["accuracy"] < 0.8 and weak["f1_macro"] < 0.8, weak
