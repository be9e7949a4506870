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
    blue, green = backend_child(settings, "blue", "v1.0.0"), backend_child(settings, "green_a", "v1.1.0")
    assert blue.env["BENTOML_HOME"] != green.env["BENTOML_HOME"]  # separate Prometheus folders
    for child in (blue, green):
        home = tmp_path / child.name / "bentoml"
        assert (home / "models").resolve() == (settings.bentoml_home / "models").resolve()
        assert child.env["BENTOML_CONFIG_OPTIONS"] == "services.penguin_classifier.workers=2"
    assert "model_version=v1.1.0" in green.argv and str(settings.green_port) in green.argv
    assert green.argv[2] == "." and green.cwd == settings.project_dir  # `bentoml serve .`: the bentofile's service


def test_what_is_shipped_comes_from_the_pyproject_table_and_can_be_overridden(monkeypatch, tmp_path):
    import tomllib

    from conftest import ROOT

    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["canary"]
    settings = Settings()
    assert (settings.model_name, settings.blue_version, settings.green_version) == (
        table["model_name"], table["blue_version"], table["green_version"])
    monkeypatch.setenv("CANARY_GREEN_VERSION", "v1.2.0")
    assert Settings().green_version == "v1.2.0"
    monkeypatch.chdir(tmp_path)  # another project, with no [tool.canary]: the model must be named somewhere
    with pytest.raises(ValidationError, match="model_name"):
        Settings()


def test_the_canary_tool_knows_no_model_code():
    """canary_kit never imports the model's own package: another BentoML service could be shipped with it."""
    import ast

    from conftest import ROOT

    for module in (ROOT / "canary_kit").glob("*.py"):
        tree = ast.parse(module.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m.split(".")[0] in ("penguin", "service", "train_model")}, module.name
