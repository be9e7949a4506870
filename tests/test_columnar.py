"""The columnar form, POST /predict_columns: the same answers as the row form (both runtimes, every data row and
the generated rows), bad columns refused with a 4xx naming the column, the limits of both forms, and the canary
counting, routing and mirroring it as /predict (real `bentoml serve` processes and the shared stack)."""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
import pytest

from canary_kit.stacks.nginx import ROUTES_TEMPLATES
from conftest import EXAMPLE_ROW, ROOT, bentoml_serve, settled
from penguin import columnar, parity
from penguin.features import (
    CANDIDATE_VERSION,
    FEATURES,
    MAX_BODY_BYTES,
    MAX_COLUMN_ROWS,
    MAX_INSTANCES,
    MODEL_NAME,
    STABLE_VERSION,
)

CLASSES = ["Adelie", "Chinstrap", "Gentoo"]
EXACT = 1e-12


def cols(rows: int = 1, **change) -> dict:
    """A valid columnar body of `rows` example rows, with some columns replaced."""
    columns = {name: [EXAMPLE_ROW[name]] * rows for name in FEATURES}
    return {"columns": {**columns, **change}}


def without(name: str) -> dict:
    body = cols(2)
    del body["columns"][name]
    return body


# (body, a word the answer must contain: the column, or the limit): at least 12 kinds, as the issue asks.
BAD = {
    "unequal lengths": (cols(3, sex=["male", "female"]), "sex"),
    "unknown column": ({"columns": {**cols(1)["columns"], "colour": ["blue"]}}, "colour"),
    "missing column": (without("flipper_length_mm"), "flipper_length_mm"),
    "wrong type (column not an array)": (cols(1, body_mass_g=3750.0), "body_mass_g"),
    "boolean in a number column": (cols(2, bill_depth_mm=[18.7, True]), "bill_depth_mm"),
    "number as string": (cols(2, body_mass_g=[3750.0, "3750"]), "body_mass_g"),
    "unknown category": (cols(3, island=["Dream", "Dream", "Atlantis"]), "island"),
    "null island": (cols(1, island=[None]), "island"),
    "negative measure": (cols(2, flipper_length_mm=[181.0, -3.0]), "flipper_length_mm"),
    "nested arrays in a number column": (cols(2, bill_length_mm=[[39.1], 40.0]), "bill_length_mm"),
    "nested arrays in a category column": (cols(1, sex=[["male"]]), "sex"),
    "object in a number column": (cols(1, body_mass_g=[{"g": 3750}]), "body_mass_g"),
    "empty batch": (cols(0), "at least 1"),
    "too many rows": (cols(MAX_COLUMN_ROWS + 1), f"at most {MAX_COLUMN_ROWS}"),
    "columns not an object": ({"columns": [EXAMPLE_ROW]}, "columns"),
    "no columns key": ({"instances": [EXAMPLE_ROW]}, "columns"),
    "extra top-level key": ({**cols(1), "model": "v2"}, "model"),
    "non-object body (array)": ([EXAMPLE_ROW], "columns"),
    "non-object body (string)": ("island", "columns"),
}

NUMBERS = '"bill_depth_mm":[18.7],"flipper_length_mm":[181],"body_mass_g":[3750],"sex":["male"]'
RAW = {  # (bytes, content type, status, a word the answer must contain)
    "NaN": (
        b'{"columns":{"island":["Dream"],"bill_length_mm":[NaN],' + NUMBERS.encode() + b"}}",
        400,
        "bill_length_mm",
    ),
    "Infinity": (
        b'{"columns":{"island":["Dream"],"bill_length_mm":[Infinity],' + NUMBERS.encode() + b"}}",
        400,
        "bill_length_mm",
    ),
    "1e999 (overflows to infinity)": (
        b'{"columns":{"island":["Dream"],"bill_length_mm":[1e999],' + NUMBERS.encode() + b"}}",
        400,
        "bill_length_mm",
    ),
    "an integer beyond float64": (
        b'{"columns":{"island":["Dream"],"bill_length_mm":[1' + b"0" * 400 + b"]," + NUMBERS.encode() + b"}}",
        400,
        "bill_length_mm",
    ),
    "not JSON": (b"island=Dream", 400, "Invalid JSON"),
    "truncated JSON": (b'{"columns":{"island":', 400, "JSON"),
    "empty body": (b"", 400, "JSON"),
    "body over the limit": (b'{"columns":{"island":[' + b'"Dream",' * 150_000 + b'"Dream"]}}', 413, "larger than"),
}


@pytest.fixture(scope="module", params=["onnx", "sklearn"])
def served(request, trained):
    """v1.1.0 (a tree model: the generated rows probe its every split) under `bentoml serve`, on each runtime."""
    target = [
        "service:PenguinClassifier",
        "--arg",
        f"model_version={CANDIDATE_VERSION}",
        "--arg",
        f"runtime={request.param}",
    ]
    with bentoml_serve(target) as url:
        yield url, request.param


def post_columns(client: httpx.Client, url: str, rows: list[dict]) -> httpx.Response:
    return client.post(f"{url}/predict_columns", json={"columns": parity.columns_of(rows)})


# --- without a server ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_columns_are_refused_naming_the_column(case):
    body, named = BAD[case]
    with pytest.raises(columnar.ColumnError) as refused:
        columnar.check(body)
    assert named in str(refused.value) or named in map(str, refused.value.loc), (case, refused.value)


def test_checked_columns_are_the_row_forms_values():
    body = cols(3, bill_length_mm=[39.1, None, 181], sex=["male", None, "female"])
    checked = columnar.check(body)
    assert checked.rows == 3 and list(checked) == list(FEATURES)
    assert checked["bill_length_mm"].dtype == np.float64 and np.isnan(checked["bill_length_mm"][1])
    assert checked["bill_length_mm"][2] == 181.0 and checked["sex"] == ["male", None, "female"]


def reading(read, body: bytes):
    """What a reading of a body gives: ("ok", its columns as plain lists, NaN as None) or ("refused", loc, message)."""
    try:
        checked = read(body)
    except columnar.ColumnError as exc:
        return "refused", exc.loc, exc.message
    plain = {
        n: [None if v != v else v for v in (v.tolist() if isinstance(v, np.ndarray) else v)] for n, v in checked.items()
    }
    return "ok", checked.rows, plain


def number_bodies() -> list[bytes]:
    """Bodies whose bill_length_mm holds one JSON number literal of every kind the two readings might read apart."""
    literals = [
        "39.1",
        "181",
        "0",
        "-0.0",
        "-1",
        "1E2",
        "1e+2",
        "1e-2",
        "0.1e1",
        "5e-324",
        "2.2250738585072014e-308",
        "1.7976931348623157e308",
        "1.8e308",
        "1e999",
        "1" + "0" * 400,
        "12345678901234567890123456789",
        "18446744073709551616",
        "9007199254740993",
        "0.30000000000000004",
        "1.00000000000000011102230246251565",
        "3.141592653589793238462643383279502884197",
        "01",
        "+1",
        ".5",
        "5.",
        "1e",
        "-",
        "NaN",
        "Infinity",
        "true",
        "null",
        '"3"',
        "[1]",
        "{}",
    ]
    rng = np.random.default_rng(22)
    for _ in range(300):  # and random decimals of up to 25 significant digits, some with exponents
        digits = "".join(map(str, rng.integers(0, 10, size=int(rng.integers(1, 26)))))
        point = int(rng.integers(0, len(digits) + 1))
        literal = (digits[:point] or "0") + ("." + digits[point:] if digits[point:] else "")
        literals.append(literal + (f"e{int(rng.integers(-330, 330))}" if rng.random() < 0.3 else ""))
    return [
        (b'{"columns":{"island":["Dream"],"bill_length_mm":[' + n.encode() + b"]," + NUMBERS.encode() + b"}}")
        for n in literals
    ]


def other_bodies() -> list[bytes]:
    """The refused bodies, the malformed ones and other ways of writing the same JSON."""
    example = json.dumps(cols(2)).encode()
    return [
        *(json.dumps(body).encode() for body, _ in BAD.values()),
        *(raw for raw, _, _ in RAW.values()),
        example,
        example.replace(b" ", b""),
        example.replace(b": ", b" :\n "),
        b"\xef\xbb\xbf" + example,
        example + b" \n",
        example + b"x",
        example + example,
        example.replace(b'"Torgersen"', b'"\\u0054orgersen"'),  # an escaped letter: the same string
        example.replace(b'"Torgersen"', b'"torgersen"'),
        example.replace(b'"male"', b'"Male"'),
        example.replace(b'{"columns": {', b'{"columns": {"island": ["Biscoe", "Biscoe"], '),  # a key twice
        example.replace(b'"columns"', b'"col\\u0075mns"'),
        json.dumps(cols(2, sex=[None, None], bill_depth_mm=[None, 1])).encode(),
        json.dumps(cols(MAX_COLUMN_ROWS)).encode(),
        json.dumps(cols(3, island=["Dream", "Dream", "Atlantis"], sex=["male"])).encode(),  # two faults: lengths first
        b'{"columns":{"island":["Dream"],"bill_length_mm":[NaN],"sex":["male"]}}',
        b'{"columns":{"island":["Dream"],"bill_length_mm":[true],' + NUMBERS.encode() + b',"colour":[1]}}',
    ]


@pytest.mark.parametrize("kind", ["numbers", "other"])
def test_the_fast_reading_of_a_body_is_the_reference_reading(kind):
    """msgspec's typed reading (the fast path) accepts what pydantic-core + `check` accept, with the same values
    (bit for bit), and refuses the rest with the reference reading's own message."""
    bodies = number_bodies() if kind == "numbers" else other_bodies()
    outcomes = set()
    for body in bodies:
        fast = reading(columnar.parse, body)
        slow = reading(lambda b: columnar.check(columnar.reference(b)), body)
        assert fast == slow, (body[:120], fast, slow)
        outcomes.add(fast[0])
    assert outcomes == {"ok", "refused"}
    columnar.BODY.decode(json.dumps(cols(3, sex=["male", None, "female"])).encode())  # a valid body: the fast path


def test_the_largest_request_of_each_form_fits_the_body_limit_that_nginx_and_the_service_share():
    templates = "\n".join((ROOT / "nginx" / name).read_text() for name in ROUTES_TEMPLATES)  # the routes' files
    limits = set(re.findall(r"client_max_body_size\s+(\d+)m;", templates))
    assert limits == {str(MAX_BODY_BYTES // (1024 * 1024))}, limits  # every nginx server: the service's limit
    longest = {
        **EXAMPLE_ROW,
        **{
            name: 1234.5678901234567 for name in ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g")
        },
        "island": "Torgersen",
        "sex": "female",
    }
    rows = json.dumps({"instances": [longest] * MAX_INSTANCES}).encode()
    columns = json.dumps({"columns": {n: [longest[n]] * MAX_COLUMN_ROWS for n in FEATURES}}).encode()
    print(
        f"\nlargest bodies: {len(rows):,} bytes as row objects, {len(columns):,} as columns; limit {MAX_BODY_BYTES:,}"
    )
    assert len(rows) < MAX_BODY_BYTES and len(columns) < MAX_BODY_BYTES


# --- one `bentoml serve` per runtime ------------------------------------------------------------------------------


@pytest.mark.integration
def test_columns_answer_exactly_as_row_objects_every_data_row_and_the_generated_rows(served):
    """Every data row and >= 10,000 generated rows, in 1,000-row requests of each form: the same classes, the
    same probabilities (to 1e-12; in practice bit for bit)."""
    import bentoml
    import joblib

    url, runtime = served
    pipeline = joblib.load(bentoml.models.get(f"{MODEL_NAME}:{CANDIDATE_VERSION}").path_of("model.joblib"))
    data = parity.data_rows(ROOT / "data" / "data.csv")
    rows = data + parity.generated_rows(pipeline, data)
    assert len(rows) - len(data) >= parity.GENERATED
    by_rows = parity.served_proba(url, rows, CLASSES)
    proba, predictions, versions = [], [], set()
    with httpx.Client(timeout=60, trust_env=False) as client:
        for start in range(0, len(rows), MAX_COLUMN_ROWS):
            response = post_columns(client, url, rows[start : start + MAX_COLUMN_ROWS])
            assert response.status_code == 200, response.text[:500]
            answer = response.json()
            assert sorted(answer["probabilities"]) == CLASSES
            proba.append(np.array([answer["probabilities"][c] for c in CLASSES]).T)
            predictions += answer["predictions"]
            versions.add(answer["model_version"])
    proba = np.vstack(proba)
    worst = float(np.abs(proba - by_rows["proba"]).max())
    print(
        f"\n{runtime}: {len(rows):,} rows ({len(data)} data + {len(rows) - len(data):,} generated), columns vs "
        f"row objects: max |dp| {worst:.1e}, class mismatches "
        f"{sum(a != b for a, b in zip(predictions, by_rows['predictions']))}"
    )
    assert versions == {CANDIDATE_VERSION} and by_rows["versions"] == [CANDIDATE_VERSION]
    assert predictions == by_rows["predictions"]
    assert worst <= EXACT


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_columns_get_4xx_naming_the_column(served, case):
    url, _ = served
    body, named = BAD[case]
    response = httpx.post(f"{url}/predict_columns", json=body, timeout=30)
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text[:500])
    assert named in response.text, (case, response.text[:500])
    assert response.headers["x-model-version"] == CANDIDATE_VERSION


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(RAW))
def test_malformed_columnar_bodies_get_the_right_4xx(served, case):
    url, _ = served
    content, status, named = RAW[case]
    response = httpx.post(f"{url}/predict_columns", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, (case, response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    assert named in response.text, (case, response.text[:500])


@pytest.mark.integration
def test_columnar_content_type_and_size_rules_are_the_row_forms(served):
    url, _ = served
    body = json.dumps(cols(2)).encode()
    refused = httpx.post(f"{url}/predict_columns", content=body, headers={"content-type": "text/csv"})
    assert refused.status_code == 415 and "application/json" in refused.text, refused.text
    most = httpx.post(f"{url}/predict_columns", json=cols(MAX_COLUMN_ROWS), timeout=30)
    assert most.status_code == 200 and len(most.json()["predictions"]) == MAX_COLUMN_ROWS


@pytest.mark.integration
def test_columnar_rows_are_counted_in_the_prediction_metrics_and_the_endpoint_figures(served):
    """The canary's per-version figures: rows per class and confidence count columnar rows as row objects, and
    BentoML's request metrics of /predict_columns are summed with /predict's ([tool.canary] endpoints)."""
    from canary_kit.core.config import Settings
    from canary_kit.observe.metrics import Snapshot, window

    url, _ = served
    names = Settings().prediction_metrics
    assert names.endpoints == ("/predict", "/predict_columns")
    with httpx.Client(timeout=30) as client:
        before = Snapshot.parse(client.get(f"{url}/metrics").text, names)
        columns = client.post(f"{url}/predict_columns", json=cols(7))
        objects = client.post(f"{url}/predict", json={"instances": [EXAMPLE_ROW] * 5})
        bad = client.post(f"{url}/predict_columns", json=cols(2, island=["Dream", "Atlantis"]))
        assert (columns.status_code, objects.status_code, bad.status_code) == (200, 200, 400)
        figures = settled(  # BentoML counts a request as its answer leaves: read until all 3 are in
            lambda: window(before, Snapshot.parse(client.get(f"{url}/metrics").text, names)),
            lambda figures: figures.requests >= 3,
            timeout=10,
        )
    print(f"\nafter 7 columnar rows, 5 row objects and a refused request: {figures.to_json()}")
    assert figures.requests == 3 and figures.errors == 0
    assert figures.rows == 12 and sum(figures.class_rows.values()) == 12
    assert figures.confidence_mean is not None


@pytest.mark.integration
def test_openapi_documents_the_columnar_form_as_valid_3_1(served):
    from openapi_spec_validator import validate

    url, _ = served
    doc = httpx.get(f"{url}/docs.json").json()
    validate(doc)
    post = doc["paths"]["/predict_columns"]["post"]
    assert {"200", "400", "413", "415"} <= set(post["responses"]), list(post["responses"])
    request = post["requestBody"]["content"]["application/json"]["schema"]
    assert request["required"] == ["columns"] and request["additionalProperties"] is False
    columns = doc["components"]["schemas"]["FeatureColumns"]
    assert list(columns["properties"]) == list(FEATURES) and columns["additionalProperties"] is False
    assert all(p["maxItems"] == MAX_COLUMN_ROWS and p["minItems"] == 1 for p in columns["properties"].values())


@pytest.mark.integration
def test_schemathesis_finds_no_server_error(served, tmp_path):
    """The fuzzer's reading of the OpenAPI document (both endpoints, valid and invalid bodies): never a 5xx."""
    import shutil
    import subprocess

    from conftest import BIN

    url, _ = served
    st = BIN / "st" if (BIN / "st").exists() else shutil.which("st") or shutil.which("schemathesis")
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    argv = [
        str(st),
        "run",
        f"{url}/docs.json",
        "--url",
        url,
        "--checks",
        "not_a_server_error",
        "--include-path-regex",
        "^/predict",
        "--max-examples",
        "150",
        "--mode",
        "all",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    output = result.stdout + result.stderr
    print(output[-3000:])
    assert result.returncode == 0, output[-5000:]


# --- through the canary stack -------------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_canary_routes_counts_and_mirrors_columnar_requests(stack):
    """Through nginx: answered by the version the split chose; counted in the unpinned split; in shadow mode
    mirrored to green as /predict_columns, and compared row by row with blue's answer."""
    from canary_kit.observe.metrics import unpinned_split
    from canary_kit.rollout.shadow import compare, settled_log
    from canary_kit.stacks.targets import LocalTarget
    from canary_kit.steer.control import set_weight

    settings = stack.settings
    target = LocalTarget(settings.state_dir)
    endpoints = target.prediction_metrics.endpoints
    mark = target.log_mark()
    with httpx.Client(timeout=30) as client:
        answers = [client.post(f"{settings.url}/predict_columns", json=cols(20)) for _ in range(10)]
    assert all(a.status_code == 200 and len(a.json()["predictions"]) == 20 for a in answers)
    versions = {"blue": stack.state.blue_version, "green": stack.state.green_version}
    entries = settled(lambda: target.log_since(mark), lambda entries: len(entries) >= 10, timeout=5)
    split = unpinned_split(entries, versions, endpoints)
    assert sum(split.values()) == 10, (split, entries[-3:])

    set_weight(target, 0, reason="test: shadow columns", shadow=True)
    try:
        mark = target.log_mark()
        with httpx.Client(timeout=30) as client:
            response = client.post(f"{settings.url}/predict_columns", json=cols(50))
            rows = client.post(f"{settings.url}/predict", json={"instances": [EXAMPLE_ROW] * 3})
        assert response.status_code == 200 and response.headers["x-model-version"] == STABLE_VERSION
        assert rows.status_code == 200
        entries = settled_log(target, mark, endpoints)
    finally:
        set_weight(target, 10, reason="test: shadow done")
    rid = response.headers["x-request-id"]
    copies = [e for e in entries if e.get("shadow") and e["request_id"] == rid]
    print(f"\nshadow copy of the columnar request: {copies}")
    assert len(copies) == 1 and copies[0]["uri"] == "/predict_columns" and copies[0]["upstream_status"] == "200"
    assert copies[0]["version"] == stack.state.green_version and len(json.loads(copies[0]["predictions"])) == 50
    report = compare(entries, STABLE_VERSION, endpoints)
    print(f"shadow comparison: {report}")
    assert report["rows_compared"] == 53 and report["rows_agreed"] == 53, report
