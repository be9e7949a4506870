"""Settings refuse bad values; each backend gets its own BENTOML_HOME and the worker count asked for."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from canary_kit.config import Settings
from canary_kit.stack import backend_child
from conftest import local_settings


@pytest.mark.parametrize(
    "values",
    [{"green_weight": 150}, {"green_weight": -1}, {"port": 0}, {"blue_port": 8000}, {"workers": 0},
     {"green_version": "latest"}, {"source": "docker"}, {"unknown": 1}],
)
def test_bad_settings_are_refused(values):
    with pytest.raises(ValidationError):
        Settings(**values)


def test_settings_come_from_canary_variables(monkeypatch):
    monkeypatch.setenv("CANARY_PORT", "9000")
    monkeypatch.setenv("CANARY_GREEN_WEIGHT", "25")
    settings = Settings()
    assert settings.port == 9000 and settings.green_weight == 25 and settings.state_dir.is_absolute()


def test_each_backend_has_its_own_home_sharing_the_model_store(tmp_path):
    settings = local_settings(tmp_path, workers=2)
    blue, green = backend_child(settings, "blue"), backend_child(settings, "green")
    assert blue.env["BENTOML_HOME"] != green.env["BENTOML_HOME"]  # separate Prometheus folders
    for child in (blue, green):
        home = tmp_path / child.name / "bentoml"
        assert (home / "models").resolve() == (settings.bentoml_home / "models").resolve()
        assert child.env["BENTOML_CONFIG_OPTIONS"] == "services.penguin_classifier.workers=2"
    assert "model_version=v1.1.0" in green.argv and str(settings.green_port) in green.argv
