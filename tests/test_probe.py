"""A configuration that does not fit the service is refused in one line before the stack serves: an endpoint the
service does not have, a JSON path that finds nothing in a real answer, a task the predictions do not fit
(canary_kit/stacks/probe.py, against real `bentoml serve` processes of services that are not ours); and `canary up` says
so as one line and leaves nothing running."""

from __future__ import annotations

import pytest

from canary_kit.core.config import Endpoint
from canary_kit.core.errors import CanaryError
from canary_kit.stacks.probe import check, request_body
from conftest import bentoml_serve
from test_adopt import canary, environment

pytestmark = [pytest.mark.integration, pytest.mark.bento]


@pytest.fixture(scope="module")
def served(foreign_bentos):
    """Both services' baseline Bentos, each served from its exported folder (its own model inside)."""
    with bentoml_serve([str(foreign_bentos["wine"].exported["baseline"])]) as wine:
        with bentoml_serve([str(foreign_bentos["diabetes"].exported["baseline"])]) as diabetes:
            yield {"wine": wine, "diabetes": diabetes}


CASES = [
    ("wine", {"/classify": Endpoint(predictions="$.labels[*]")}, "classification", None),
    ("diabetes", {"/predict": Endpoint(predictions="$.progression")}, "regression", None),
    ("wine", {"/predict": Endpoint(predictions="$.labels[*]")}, "classification", "has no endpoint /predict"),
    ("wine", {"/classify": Endpoint(predictions="$.predictions[*]")}, "classification", "finds nothing"),
    ("wine", {"/classify": Endpoint(predictions="$.labels[*]")}, "regression", "not numbers"),
    ("diabetes", {"/predict": Endpoint(predictions="$.progression")}, "classification", 'task "regression"'),
    ("wine", {"/classify": Endpoint(predictions="$.labels[*]", confidence="$.probs[*]")}, "classification", "nothing"),
    ("diabetes", {"/predict": Endpoint(predictions="$.progression", example='{"x": 1}')}, "regression", "answered"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[3] or 'fits'}" for c in CASES])
def test_a_configuration_is_checked_against_the_running_service(served, case):
    key, endpoints, task, refusal = case
    if refusal is None:
        check(served[key], endpoints, task)
        return
    with pytest.raises(CanaryError) as caught:
        check(served[key], endpoints, task)
    message = str(caught.value)
    print(f"\n{key}: {message}")
    assert refusal in message and "\n" not in message


def test_a_request_is_made_from_the_service_schema(served):
    from canary_kit.stacks.probe import openapi

    body = request_body(openapi(served["wine"]), "/classify")
    assert isinstance(body, dict) and len(body["wines"]) == 1 and len(body["wines"][0]) == 13


def test_canary_up_refuses_a_path_that_finds_nothing_in_one_line(foreign_bentos, tmp_path):
    service = foreign_bentos["wine"]
    project = service.project_copy(tmp_path)
    (project / "pyproject.toml").write_text(
        '[tool.canary]\nservice_name = "wine_cultivar"\n'
        f'blue_version = "{service.versions["baseline"]}"\ngreen_version = "{service.versions["good"]}"\n'
        '[tool.canary.endpoints."/classify"]\npredictions = "$.classes[*]"\n'
    )
    env = environment(tmp_path)
    up = canary(project, env, "up", timeout=240)
    print(f"\n{up.stdout}{up.stderr}")
    assert up.returncode == 1 and "Traceback" not in up.stderr
    lines = [line for line in up.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "finds nothing" in lines[0] and "$.classes[*]" in lines[0], up.stderr
    down = canary(project, env, "down")
    assert "nothing of a canary stack runs" in down.stdout, down.stdout
