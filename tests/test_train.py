"""train_model.py: two really different versions in the store, with their metadata; idempotent; exportable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT, run
from penguin.features import CANDIDATE_VERSION, FEATURES, MODEL_NAME, STABLE_VERSION


@pytest.fixture(scope="module")
def models(trained):
    import bentoml

    return {v: bentoml.models.get(f"{MODEL_NAME}:{v}") for v in (STABLE_VERSION, CANDIDATE_VERSION)}


def test_both_versions_have_full_metadata(models):
    for version, model in models.items():
        meta = model.info.metadata
        assert meta["features"] == list(FEATURES), version
        assert set(meta["feature_types"]) == set(FEATURES)
        assert {"accuracy", "f1_macro", "log_loss"} <= set(meta["holdout_metrics"]), meta["holdout_metrics"]
        assert meta["holdout_metrics"]["accuracy"] > 0.9, meta["holdout_metrics"]
        assert len(meta["data_sha256"]) == 64
        assert {"scikit-learn", "bentoml", "pandas", "numpy", "python"} <= set(meta["library_versions"])
        assert meta["hyperparameters"], version
        assert model.info.labels["stage"] == ("stable" if version == STABLE_VERSION else "candidate")


def test_versions_really_differ(models):
    stable, candidate = (models[v].info.metadata for v in (STABLE_VERSION, CANDIDATE_VERSION))
    assert stable["algorithm"] != candidate["algorithm"]
    assert stable["features_used"] != candidate["features_used"]


def test_rerun_keeps_models_and_force_replaces_them_identically(models, tmp_path):
    import bentoml
    import joblib
    import pandas as pd

    rows = pd.read_csv(ROOT / "data" / "data.csv").drop(columns="target")
    before = {v: joblib.load(m.path_of("model.joblib")).predict_proba(rows) for v, m in models.items()}

    again = run([sys.executable, "train_model.py", "--no-export"])
    assert again.stdout.count("kept") == 2, again.stdout

    forced = run([sys.executable, "train_model.py", "--force", "--export-dir", str(tmp_path)])
    assert forced.stdout.count("replaced") == 2, forced.stdout
    for version, proba in before.items():
        model = bentoml.models.get(f"{MODEL_NAME}:{version}")
        assert (joblib.load(model.path_of("model.joblib")).predict_proba(rows) == proba).all(), version


def test_exported_archives_import_into_another_store(trained, tmp_path):
    archives = sorted(trained.glob("*.bentomodel"))
    assert [a.name for a in archives] == [f"{MODEL_NAME}-{v}.bentomodel" for v in (STABLE_VERSION, CANDIDATE_VERSION)]
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "elsewhere")}
    bentoml = os.path.join(os.path.dirname(sys.executable), "bentoml")
    for archive in archives:
        subprocess.run([bentoml, "models", "import", str(archive)], env=env, check=True, capture_output=True)
    listed = subprocess.run([bentoml, "models", "list", "-o", "json"], env=env, check=True, capture_output=True)
    for version in (STABLE_VERSION, CANDIDATE_VERSION):
        assert f"{MODEL_NAME}:{version}" in listed.stdout.decode(), listed.stdout
