"""service.py: the class called directly, and real `bentoml serve` processes for each version."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import httpx
import pytest

from conftest import BIN, EXAMPLE_ROW, ROOT, bentoml_serve
from penguin import parity
from penguin.features import CANDIDATE_VERSION, FEATURES, MAX_INSTANCES, MODEL_NAME, STABLE_VERSION

CLASSES = {"Adelie", "Chinstrap", "Gentoo"}


def test_service_class_called_directly(trained):
    from penguin.features import Penguin
    from service import RUNTIME, PenguinClassifier

    instance = PenguinClassifier()
    assert RUNTIME == "onnx"
    rows = [Penguin(**EXAMPLE_ROW), Penguin(**{**EXAMPLE_ROW, "island": "Biscoe", "bill_length_mm": None, "sex": None})]
    out = asyncio.run(instance.predict(instances=rows))
    assert out.model_version == STABLE_VERSION
    assert len(out.predictions) == 2 and set(out.predictions) <= CLASSES
    for probs in out.probabilities:
        assert set(probs) == CLASSES and abs(sum(probs.values()) - 1) < 1e-6


@pytest.fixture(scope="module", params=["blue", "green", "sklearn"])
def backend(request, stack):
    """Each version's real `bentoml serve` process (ONNX runtime), addressed directly (not through nginx), and
    v1.1.0 on the scikit-learn runtime."""
    if request.param == "sklearn":
        target = [
            "service:PenguinClassifier",
            "--arg",
            f"model_version={CANDIDATE_VERSION}",
            "--arg",
            "runtime=sklearn",
        ]
        with bentoml_serve(target) as url:
            yield url, CANDIDATE_VERSION
        return
    slot = "blue" if request.param == "blue" else stack.state.green_slot
    yield stack.settings.slot_url(slot), stack.state.blue_version if slot == "blue" else stack.state.green_version


@pytest.mark.integration
def test_health_and_metadata(backend):
    url, version = backend
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "model_version": version}
    assert health.headers["x-model-version"] == version
    meta = httpx.get(f"{url}/metadata").json()
    assert meta["model_version"] == version and meta["metadata"]["features"] == list(FEATURES)
    assert meta["runtime"] in ("onnx", "sklearn") and meta["metadata"]["onnx"]["parity"]["ok"], meta["runtime"]
    assert meta["heads_with_bodies"] is True, meta  # the worker wrapped uvicorn: each answer leaves in one write
    for probe in ("/livez", "/readyz", "/metrics"):
        response = httpx.get(f"{url}{probe}")
        assert response.status_code == 200 and response.headers["x-model-version"] == version, probe


@pytest.mark.integration
@pytest.mark.parametrize("rows", [1, 25, MAX_INSTANCES])
def test_predict_single_and_batch(backend, rows):
    url, version = backend
    batch = [{**EXAMPLE_ROW, "body_mass_g": 3000.0 + i} for i in range(rows)]
    response = httpx.post(f"{url}/predict", json={"instances": batch}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == version and response.headers["x-model-version"] == version
    assert len(body["predictions"]) == rows == len(body["probabilities"])
    assert set(body["predictions"]) <= CLASSES


@pytest.mark.integration
def test_out_of_range_values_are_answered_not_mangled(backend):
    url, _ = backend
    giant = {**EXAMPLE_ROW, "bill_length_mm": 500.0, "body_mass_g": 90000.0}
    response = httpx.post(f"{url}/predict", json={"instances": [giant, EXAMPLE_ROW]})
    assert response.status_code == 200, response.text
    first, second = response.json()["probabilities"]
    assert first != second  # the extreme row was not clipped into the ordinary one


def _row(**change):
    return {**EXAMPLE_ROW, **change}


BAD_BODIES = {
    "missing feature": ({"instances": [{k: v for k, v in EXAMPLE_ROW.items() if k != "sex"}]}, "sex"),
    "unknown feature": ({"instances": [_row(colour="blue")]}, "colour"),
    "wrong type": ({"instances": [_row(bill_length_mm="long")]}, "bill_length_mm"),
    "number as string": ({"instances": [_row(body_mass_g="3750")]}, "body_mass_g"),
    "unknown category": ({"instances": [_row(island="Atlantis")]}, "island"),
    "negative measure": ({"instances": [_row(flipper_length_mm=-3)]}, "flipper_length_mm"),
    "empty instances": ({"instances": []}, "instances"),
    "no instances key": ({"rows": [EXAMPLE_ROW]}, "instances"),
    "instances not a list": ({"instances": EXAMPLE_ROW}, "instances"),
    "too many rows": ({"instances": [EXAMPLE_ROW] * (MAX_INSTANCES + 1)}, "at most 1000"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_bodies_get_4xx_naming_the_problem(backend, case):
    url, version = backend
    body, named = BAD_BODIES[case]
    response = httpx.post(f"{url}/predict", json=body)
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
    assert named in response.text, (case, response.text)
    assert response.headers["x-model-version"] == version


RAW_BODIES = {
    "NaN": (
        b'{"instances":[{"island":"Dream","bill_length_mm":NaN,"bill_depth_mm":18.7,'
        b'"flipper_length_mm":181,"body_mass_g":3750,"sex":"male"}]}',
        "application/json",
        400,
        "finite",
    ),
    "Infinity": (
        b'{"instances":[{"island":"Dream","bill_length_mm":1e999,"bill_depth_mm":18.7,'
        b'"flipper_length_mm":181,"body_mass_g":3750,"sex":"male"}]}',
        "application/json",
        400,
        "finite",
    ),
    "not JSON": (b"island=Dream", "application/json", 400, "Invalid JSON"),
    "truncated JSON": (b'{"instances":[{"island":', "application/json", 400, "JSON"),
    "wrong content type": (json.dumps({"instances": [EXAMPLE_ROW]}).encode(), "text/csv", 415, "application/json"),
    "form content type": (b"a=b", "application/x-www-form-urlencoded", 415, "application/json"),
    "body too large": (b"[" + b"1," * 600_000 + b"1]", "application/json", 413, "larger than"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(RAW_BODIES))
def test_malformed_requests_get_the_right_4xx(backend, case):
    url, _ = backend
    content, media_type, status, named = RAW_BODIES[case]
    response = httpx.post(f"{url}/predict", content=content, headers={"content-type": media_type})
    assert response.status_code == status, (case, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert named in response.text, (case, response.text)


@pytest.mark.integration
def test_model_version_env_var_chooses_the_version(trained):
    with bentoml_serve(["service:PenguinClassifier"], env={"MODEL_VERSION": CANDIDATE_VERSION}) as url:
        assert httpx.get(f"{url}/health").json()["model_version"] == CANDIDATE_VERSION
        response = httpx.post(f"{url}/predict", json={"instances": [EXAMPLE_ROW]})
        assert response.json()["model_version"] == CANDIDATE_VERSION


@pytest.mark.integration
def test_unknown_version_fails_at_start_naming_the_versions(trained):
    argv = [str(BIN / "bentoml"), "serve", "service:PenguinClassifier", "--arg", "model_version=v9.9.9", "--port", "0"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "'v9.9.9' is not in the model store" in output and "v1.0.0, v1.1.0" in output, output[-2000:]


@pytest.mark.integration
def test_served_answers_match_scikit_learn(backend):
    """Every data row and the generated rows through HTTP: probabilities within 1e-6, the same classes."""
    import bentoml
    import joblib

    url, version = backend
    pipeline = joblib.load(bentoml.models.get(f"{MODEL_NAME}:{version}").path_of("model.joblib"))
    result = parity.served_parity(url, pipeline, parity.data_rows(ROOT / "data" / "data.csv"))
    print(f"\n{url} {version}: {parity.summary(result)}; answered by {result['versions']}")
    assert result["versions"] == [version]
    assert result["ok"], result


@pytest.mark.integration
def test_openapi_document_is_valid_3_1_with_every_route(backend):
    from openapi_spec_validator import validate

    url, version = backend
    doc = httpx.get(f"{url}/docs.json").json()
    validate(doc)  # raises, naming the first problem, if the document is not valid OpenAPI
    assert doc["openapi"].startswith("3.1") and doc["info"]["version"] == version
    assert {"/predict", "/health", "/metadata", "/livez", "/readyz", "/metrics"} <= set(doc["paths"]), list(
        doc["paths"]
    )
    answers = doc["paths"]["/predict"]["post"]["responses"]
    assert {"200", "400", "413", "415"} <= set(answers), list(answers)


def _chunks(payload: bytes, size: int = 64 * 1024):
    for start in range(0, len(payload), size):
        yield payload[start : start + size]


@pytest.mark.integration
def test_a_chunked_body_obeys_the_same_limit(backend):
    url, version = backend
    big = b"[" + b"1," * 600_000 + b"1]"
    response = httpx.post(f"{url}/predict", content=_chunks(big), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["error"], response.text
    assert response.headers["x-model-version"] == version
    small = json.dumps({"instances": [EXAMPLE_ROW] * 5}).encode()
    response = httpx.post(f"{url}/predict", content=_chunks(small, 100), headers={"content-type": "application/json"})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 5, response.text
    bad = json.dumps({"instances": [{**EXAMPLE_ROW, "island": "Atlantis"}]}).encode()
    response = httpx.post(f"{url}/predict", content=_chunks(bad, 10), headers={"content-type": "application/json"})
    assert response.status_code == 400 and "island" in response.text, response.text


@pytest.mark.integration
def test_bad_input_is_logged_as_one_line(stack):
    log = next(c.log for c in stack.children if c.name == "blue")
    start = log.stat().st_size
    url = stack.settings.slot_url("blue")
    httpx.post(f"{url}/predict", json={"instances": [{**EXAMPLE_ROW, "island": "Atlantis"}]})
    httpx.post(f"{url}/predict", content=b"island=Dream", headers={"content-type": "application/json"})
    httpx.post(f"{url}/predict", content=b"a=b", headers={"content-type": "text/csv"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(log, errors="replace") as f:
            f.seek(start)
            new = f.read()
        if new.count("bad request on /predict") >= 3:
            break
        time.sleep(0.2)
    print(f"\nnew log lines:\n{new}")
    lines = [line for line in new.splitlines() if line.strip()]
    assert sum("bad request on /predict" in line for line in lines) == 3, lines
    assert "Traceback" not in new and len(lines) == 3, lines
    assert any("instances.0.island" in line for line in lines) and any("(415)" in line for line in lines), lines


@pytest.mark.integration
def test_model_path_serves_an_archive_importing_it(trained, tmp_path):
    archive = trained / f"{MODEL_NAME}-{CANDIDATE_VERSION}.bentomodel"
    relative = os.path.relpath(archive, ROOT)  # as in the README: a path from the project folder
    env = {"BENTOML_HOME": str(tmp_path / "empty-home"), "MODEL_PATH": relative}
    with bentoml_serve(["service:PenguinClassifier"], env=env) as url:
        assert httpx.get(f"{url}/health").json()["model_version"] == CANDIDATE_VERSION
        response = httpx.post(f"{url}/predict", json={"instances": [EXAMPLE_ROW]})
        assert response.status_code == 200 and response.json()["model_version"] == CANDIDATE_VERSION
    assert (tmp_path / "empty-home" / "models" / MODEL_NAME / CANDIDATE_VERSION / "model.onnx").is_file()


@pytest.mark.integration
def test_model_path_refuses_a_contradicting_model_version(trained):
    archive = trained / f"{MODEL_NAME}-{CANDIDATE_VERSION}.bentomodel"
    argv = [str(BIN / "bentoml"), "serve", "service:PenguinClassifier", "--port", "0"]
    env = {**os.environ, "MODEL_PATH": str(archive), "MODEL_VERSION": STABLE_VERSION}
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert f"holds {MODEL_NAME}:{CANDIDATE_VERSION} but MODEL_VERSION" in output, output[-2000:]
