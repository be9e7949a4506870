"""Settings refuse bad values; each backend gets its own BENTOML_HOME and the worker count asked for."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from canary_kit.core.config import Settings, environment
from canary_kit.core.errors import CanaryError
from canary_kit.stacks.backends import backend_child
from conftest import local_settings


@pytest.mark.parametrize(
    "values",
    [
        {"green_weight": 150},
        {"green_weight": -1},
        {"port": 0},
        {"blue_port": 8000},
        {"workers": 0},
        {"green_version": "latest"},
        {"source": "docker"},
        {"unknown": 1},
    ],
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
        table["model_name"],
        table["blue_version"],
        table["green_version"],
    )
    monkeypatch.setenv("CANARY_GREEN_VERSION", "v1.2.0")
    assert Settings().green_version == "v1.2.0"
    monkeypatch.chdir(tmp_path)  # another project, with no [tool.canary]: the service must be named somewhere
    with pytest.raises(ValidationError, match="service_name"):
        Settings()


def test_the_environment_is_read_typed_and_a_bad_token_refused(monkeypatch, tmp_path):
    """CANARY_STATE_DIR, CANARY_COMPOSE_CMD, CANARY_USER and CANARY_DASHBOARD_TOKEN go through config.Environment:
    typed, an empty one read as unset, a short token refused in one line naming the variable, never echoed."""
    for name in ("STATE_DIR", "COMPOSE_CMD", "USER", "DASHBOARD_TOKEN"):
        monkeypatch.delenv(f"CANARY_{name}", raising=False)
    found = environment()
    assert (str(found.state_dir), found.compose_cmd, found.user, found.dashboard_token) == (".canary", None, None, None)
    monkeypatch.setenv("CANARY_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("CANARY_COMPOSE_CMD", "docker-compose")
    monkeypatch.setenv("CANARY_USER", " ")
    monkeypatch.setenv("CANARY_DASHBOARD_TOKEN", "s3cret-s3cret-s3cret")
    found = environment()
    assert (found.state_dir, found.compose_cmd, found.user) == (tmp_path, "docker-compose", None)
    assert found.dashboard_token is not None and found.dashboard_token.get_secret_value() == "s3cret-s3cret-s3cret"
    assert "s3cret" not in repr(found)
    monkeypatch.setenv("CANARY_DASHBOARD_TOKEN", "short-s3cret")
    with pytest.raises(CanaryError) as refused:
        environment()
    assert str(refused.value) == "CANARY_DASHBOARD_TOKEN: must have at least 16 characters", str(refused.value)


def test_the_kit_names_no_penguin_anywhere():
    """The kit is for any BentoML service: nothing in canary_kit/ (code, templates, pages) names the example's model."""
    from conftest import ROOT

    named = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "canary_kit").rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
        if "penguin" in line.lower()
    ]
    assert not named, f"canary_kit names the penguin example at {named}"


def test_the_canary_tool_knows_no_model_code():
    """canary_kit never imports the model's own package: another BentoML service could be shipped with it."""
    import ast

    from conftest import ROOT

    modules = sorted((ROOT / "canary_kit").rglob("*.py"))  # every subpackage's
    assert len(modules) > 50, f"only {len(modules)} modules found under canary_kit/"
    for module in modules:
        tree = ast.parse(module.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        named = {m for m in imported if m.split(".")[0] in ("penguin", "service", "train_model")}
        assert not named, f"{module.relative_to(ROOT)} imports {named}"


def test_the_tool_and_the_service_write_a_validation_error_alike():
    """canary_kit.core.errors.describe (bad settings) and penguin.web.describe (bad requests) flatten pydantic's errors
    in one form, `location: message`; neither package may import the other, so this test is what keeps them one.
    They differ only where their readers do: the service counts the errors and shows at most `limit` of them, and
    names an error of the whole input `body` (the tool: `value`)."""
    from pydantic import BaseModel, field_validator, model_validator

    from canary_kit.core.errors import describe as tool_describe
    from penguin.web import describe as service_describe

    class Row(BaseModel):
        island: str
        mass: float

        @field_validator("mass")
        @classmethod
        def _positive(cls, mass: float) -> float:
            if mass <= 0:
                raise ValueError("mass must be positive")
            return mass

    class Body(BaseModel):
        instances: list[Row]
        note: int = 0

        @model_validator(mode="after")
        def _some(self) -> Body:
            if not self.instances:
                raise ValueError("no rows")
            return self

    bad = {"instances": [{"island": 3, "mass": -1}, {"mass": "heavy"}], "note": "x"}
    with pytest.raises(ValidationError) as caught:
        Body.model_validate(bad)
    tool = tool_describe(caught.value)
    count = len(caught.value.errors())
    service = service_describe(caught.value, limit=count)
    assert tool == (
        "instances.0.island: Input should be a valid string; instances.0.mass: mass must be positive; "
        "instances.1.island: Field required; instances.1.mass: Input should be a valid number, unable to parse "
        "string as a number; note: Input should be a valid integer, unable to parse string as an integer"
    )
    assert service == f"{count} validation error(s): {tool}"
    assert service_describe(caught.value) == f"{count} validation error(s): " + "; ".join(tool.split("; ")[:3]) + (
        f"; and {count - 3} more"
    )
    with pytest.raises(ValidationError) as whole:
        Body.model_validate({"instances": []})
    assert tool_describe(whole.value) == "value: no rows"
    assert service_describe(whole.value) == "1 validation error(s): body: no rows"
