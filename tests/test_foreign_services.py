"""The two services that are not ours (tests/services/): their Bentos as built, served and judged offline.

They are written the usual BentoML way: no version header, no X-Predictions, no metrics of their own, the model
loaded by `name:latest`. These tests prove what the kit may rely on when it adopts them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import bentoml_serve
from foreign import ROLES

pytestmark = pytest.mark.bento
CASES = [(key, role) for key in ("wine", "diabetes") for role in ROLES]
# What BentoML's own validation must refuse, per service: each a body (bytes: sent as they are) and what is wrong.
ROW_WINE = {"alcohol": 13.2, "malic_acid": 1.78, "ash": 2.14, "alcalinity_of_ash": 11.2, "magnesium": 100.0}
BAD = {
    "wine": [
        ({}, "no wines"),
        ({"wines": []}, "no rows"),
        ({"wines": [ROW_WINE]}, "a row missing 8 features"),
        ({"wines": [dict.fromkeys(ROW_WINE, "strong")]}, "text for numbers"),
        ({"wines": {"alcohol": 13.2}}, "an object for the list"),
        (b"{not json", "not JSON"),
    ],
    "diabetes": [
        ({}, "no input_data"),
        ({"input_data": {"age": "old"}}, "text for a number, 9 fields missing"),
        ({"input_data": [{"age": 48}]}, "a list for the row"),
        ({"age": 48, "sex": 1, "bmi": 21.6}, "the row without its input_data key"),
        (b"{not json", "not JSON"),
    ],
}


def test_each_bento_holds_its_own_model(foreign_bentos, tmp_path):
    import bentoml

    for key, service in foreign_bentos.items():
        print(f"{key}: {service.versions} built in {service.build_seconds:.1f} s; models {service.models}")
        project = sorted(p.name for p in service.project_copy(tmp_path).iterdir())
        assert project == ["README.md", "bentofile.yaml", "requirements.txt", "service.py", "train.py"], project
        assert len(set(service.models.values())) == len(ROLES), service.models
        for role in ROLES:
            bento = bentoml.get(service.tag(role))
            assert [str(m.tag) for m in bento.info.all_models] == [service.models[role]], (key, role)
            src = bento.path_of("src")
            shipped = sorted(str(p.relative_to(src)) for p in Path(src).rglob("*") if p.is_file())
            assert shipped == ["bentofile.yaml", "service.py"], shipped  # nothing of the kit, nothing of penguin
            name, version = service.models[role].split(":")
            assert (service.exported[role] / "models" / name / version / "model.yaml").is_file(), (key, role)
            metadata = bentoml.models.get(service.models[role]).info.metadata
            assert metadata["metrics"]["holdout_rows"] > 0, metadata
    assert foreign_bentos["wine"].versions == {"baseline": "1.0.0", "good": "1.1.0", "worse": "1.2.0"}
    generated = foreign_bentos["diabetes"].versions.values()
    # BentoML's own version names (e.g. 2oxwsnhr22k7max4): not vX.Y.Z
    assert all(re.fullmatch(r"[a-z0-9]{16}", v) for v in generated), generated


def test_worse_versions_are_worse_offline(foreign_bentos):
    """On each service's hold-out split, the worse version is clearly worse than both others; the figures printed."""
    wine, diabetes = foreign_bentos["wine"], foreign_bentos["diabetes"]
    rows, truth = wine.holdout()
    accuracy = {role: float(np.mean(np.array(wine.offline(role, rows)) == truth)) for role in ROLES}
    shares = {
        role: {str(c): int(n) for c, n in zip(*np.unique(wine.offline(role, rows), return_counts=True))}
        for role in ROLES
    }
    print(f"wine hold-out accuracy over {len(truth)} rows: {accuracy}; predicted classes {shares}")
    assert min(accuracy["baseline"], accuracy["good"]) >= 0.9, accuracy
    assert accuracy["worse"] <= min(accuracy["baseline"], accuracy["good"]) - 0.3, accuracy

    rows, truth = diabetes.holdout()
    predicted = {role: np.array(diabetes.offline(role, rows)) for role in ROLES}
    mae = {role: float(np.mean(np.abs(p - truth))) for role, p in predicted.items()}
    spread = {role: round(float(p.std()), 1) for role, p in predicted.items()}
    constant = float(np.mean(np.abs(np.array(truth) - diabetes.train.split()[2].mean())))
    print(f"diabetes hold-out MAE over {len(truth)} rows: {mae} (the training mean: {constant:.1f}); sd {spread}")
    assert max(mae["baseline"], mae["good"]) <= 0.85 * constant, mae
    assert mae["worse"] >= 1.15 * max(mae["baseline"], mae["good"]), mae
    assert spread["worse"] <= 0.5 * min(spread["baseline"], spread["good"]), spread  # a clearly other distribution


def _post(client: httpx.Client, endpoint: str, body) -> httpx.Response:
    if isinstance(body, bytes):
        return client.post(endpoint, content=body, headers={"content-type": "application/json"})
    return client.post(endpoint, json=body)


@pytest.mark.integration
@pytest.mark.parametrize(("key", "role"), CASES)
def test_each_bento_serves_its_own_model(foreign_bentos, key, role):
    """Served from its exported folder, a Bento answers in its documented shape with its own model's predictions,
    refuses bad input with BentoML's 400, sets no version or prediction header and exports no metrics of its own."""
    service = foreign_bentos[key]
    rows, _ = service.rows(30, seed=7)
    expected = service.offline(role, rows)
    with bentoml_serve([str(service.exported[role])]) as url, httpx.Client(base_url=url, timeout=30) as client:
        if service.spec.task == "classification":
            answers = [_post(client, service.spec.endpoint, service.body(rows))]
            answer = answers[0].json()
            assert set(answer) == {"labels", "scores"}, answer
            assert answer["labels"] == expected
            scores = np.array(answer["scores"])
            assert scores.shape == (len(rows), 3) and np.allclose(scores.sum(axis=1), 1.0)
            assert np.allclose(scores, service.offline_scores(role, rows), atol=1e-9)
        else:
            answers = [_post(client, service.spec.endpoint, service.body([row])) for row in rows]
            got = [a.json() for a in answers]
            assert all(set(a) == {"progression"} and isinstance(a["progression"], float) for a in got), got[:3]
            assert all(math.isclose(a["progression"], e, rel_tol=1e-9) for a, e in zip(got, expected)), (got, expected)
        assert all(a.status_code == 200 for a in answers), [a.status_code for a in answers]
        headers = {name.lower() for a in answers for name in a.headers}
        assert not headers & {"x-model-version", "x-predictions"}, headers

        refused = {why: _post(client, service.spec.endpoint, body) for body, why in BAD[key]}
        codes = {why: (r.status_code, r.text[:120]) for why, r in refused.items()}
        assert all(r.status_code == 400 and r.json()["error"] for r in refused.values()), codes

        docs = client.get("/docs.json").json()
        assert "post" in docs["paths"][service.spec.endpoint], list(docs["paths"])
        names = {line.split("{")[0].split(" ")[0] for line in client.get("/metrics").text.splitlines()}
        own = {n for n in names if n and not n.startswith("#") and not n.startswith("bentoml_")}
        assert not own, own


@pytest.mark.integration
@pytest.mark.parametrize("key", ["wine", "diabetes"])
def test_a_bento_served_by_tag_from_the_store_serves_the_newest_model(foreign_bentos, key):
    """Why the other tests serve exported folders: `bentoml serve NAME:VERSION` of the baseline Bento resolves its
    service's `name:latest` in the model store again, so it answers with the worse model (trained last), not with
    the one its bento.yaml names. If BentoML starts pinning the model it built with, this fails: then serving by tag
    is enough."""
    service = foreign_bentos[key]
    rows, _ = service.rows(30, seed=11)
    baseline, newest = service.offline("baseline", rows), service.offline("worse", rows)
    assert baseline != newest
    with bentoml_serve([service.tag("baseline")]) as url, httpx.Client(base_url=url, timeout=30) as client:
        if service.spec.task == "classification":
            served = client.post(service.spec.endpoint, json=service.body(rows)).json()["labels"]
        else:
            served = [client.post(service.spec.endpoint, json=service.body([r])).json()["progression"] for r in rows]
    print(f"{service.tag('baseline')} served by tag answered as {service.models['worse']} (the newest model)")
    assert np.allclose(served, newest) if key == "diabetes" else served == newest
