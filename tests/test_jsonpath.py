"""Where answers hold their predictions: the JSON paths of [tool.canary], read the same way by the kit
(canary_kit/core/jsonpath.py) and by nginx as each answer passes (canary-observe.js, through a real nginx in front of
a real backend that answers with whatever it is sent). One table of answers for both; every case's predictions and
confidences as logged by nginx equal what Python selects."""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from canary_kit.core import accesslog, jsonpath, routing
from canary_kit.core.config import Endpoint
from canary_kit.stacks.backends import wait_ready
from canary_kit.stacks.local import Child
from canary_kit.stacks.nginx import LocalNginx
from conftest import local_settings

BIG = 1000  # rows of a batch answer: past canary-observe.js's LARGE (4 KiB): it reads a first-member array unparsed
ROWS = [f"class_{i % 3}" for i in range(BIG)]
SCORES = [[0.7, 0.2, 0.1]] * BIG
ODD = ["Müller", "日本", "🐧", 'a"b', "a]b"]  # classes a byte-wise reader would get wrong

# (name, predictions path, confidence path or None, answer, expected predictions or None, expected confidences)
CASES = [
    ("list", "$.predictions[*]", None, {"predictions": ["a", "b"]}, ["a", "b"], None),
    ("scalar", "$.admission_chance", None, {"admission_chance": 0.73}, [0.73], None),
    ("nested", "$.output.labels[*]", None, {"output": {"labels": [1, 2, 3]}}, [1, 2, 3], None),
    ("top-level list", "$[*]", None, [3.5, -1e-3, 2e10], [3.5, -1e-3, 2e10], None),
    ("list of objects", "$[*].label", None, [{"label": "x"}, {"label": "y"}], ["x", "y"], None),
    ("an index", "$.outputs[1]", None, {"outputs": [9, 8]}, [8], None),
    ("booleans and null", "$.p[*]", None, {"p": [True, False, None]}, [True, False, None], None),
    (
        "unicode",
        "$.p[*]",
        None,
        {"p": ["Müller", "日本", "🐧", 'a"b', "a]b"]},
        ["Müller", "日本", "🐧", 'a"b', "a]b"],
        None,
    ),
    ("missing key", "$.predictions[*]", None, {"prediction": ["a"]}, None, None),
    ("a name on a list", "$.p.q", None, {"p": [1]}, None, None),
    ("index past the end", "$.p[5]", None, {"p": [1]}, None, None),
    ("[*] on an object", "$.p[*]", None, {"p": {"a": 1}}, None, None),
    ("not JSON", "$.p[*]", None, "not json", None, None),
    ("empty list", "$.p[*]", None, {"p": []}, [], None),
    (
        "confidence: lists",
        "$.labels[*]",
        "$.scores[*]",
        {"labels": ["a", "b"], "scores": [[0.9, 0.1], [0.3, 0.7]]},
        ["a", "b"],
        [0.9, 0.7],
    ),
    (
        "confidence: objects",
        "$.predictions[*]",
        "$.probabilities[*]",
        {"predictions": ["x"], "probabilities": [{"x": 0.6, "y": 0.4}]},
        ["x"],
        [0.6],
    ),
    (
        "confidence: columns",
        "$.predictions[*]",
        "$.probabilities",
        {"predictions": ["x", "y"], "probabilities": {"x": [0.8, 0.1], "y": [0.2, 0.9]}},
        ["x", "y"],
        [0.8, 0.9],
    ),
    ("confidence: numbers", "$.p[*]", "$.c[*]", {"p": [1, 0], "c": [0.55, 0.95]}, [1, 0], [0.55, 0.95]),
    ("a large batch, first member", "$.labels[*]", None, {"labels": ROWS, "scores": SCORES}, ROWS, None),
    ("a large batch, later member", "$.labels[*]", None, {"scores": SCORES, "labels": ROWS}, ROWS, None),
    (
        "a large batch with confidences",
        "$.labels[*]",
        "$.scores[*]",
        {"labels": ROWS, "scores": SCORES},
        ROWS,
        [0.7] * BIG,
    ),
    (
        "a large batch of odd strings",
        "$.p[*]",
        None,
        {"p": ['a"]b\\', "x,y", "\u00e9"] * 600},
        ['a"]b\\', "x,y", "\u00e9"] * 600,
        None,
    ),
    ("a large batch of nested rows", "$.p[*]", None, {"p": [[1, 2]] * 800}, [[1, 2]] * 800, None),
    (
        "a large batch, a ] in a class",
        "$.p[*]",
        None,
        {"p": ["a", "x]y", "z]", "]"] * 300},
        ["a", "x]y", "z]", "]"] * 300,
        None,
    ),
    ("a large batch of numbers", "$.p[*]", None, {"p": [1.5e3, -2, 0.25] * 500, "q": 1}, [1.5e3, -2, 0.25] * 500, None),
    ("a large batch of literals", "$.p[*]", None, {"p": [True, None, False] * 500}, [True, None, False] * 500, None),
    ("a large batch, an empty list first", "$.p[*]", None, {"p": [], "q": ROWS}, [], None),
    # answers as their text: whitespace where canary.js looks at single bytes (around the array), and line breaks
    (
        "a large batch, spaced",
        "$.p[*]",
        None,
        '{ "p" :\t[ ' + " , ".join(json.dumps(row) for row in ROWS) + ' \t] , "q" : 1 }',
        ROWS,
        None,
    ),
    ("a large batch, indented", "$.p[*]", None, json.dumps({"p": ROWS, "q": 1}, indent=1), ROWS, None),
]


def as_python(answer):
    """The answer as Python reads it: an answer given as its text is parsed, when it is JSON."""
    if not isinstance(answer, str):
        return answer
    try:
        return json.loads(answer)
    except ValueError:
        return answer


def test_the_python_rule_selects_as_the_table_says():
    for name, path, _, answer, expected, _ in CASES:
        found = jsonpath.parse(path).select(as_python(answer))
        assert found == expected, (name, found)


@pytest.mark.parametrize("text", ["predictions", "$..x", "$.a[*][*]", "$.a b", "$['a']", "$.a[-1]"])
def test_paths_outside_the_syntax_are_refused(text):
    with pytest.raises(jsonpath.PathError):
        jsonpath.parse(text)


class Echo(BaseHTTPRequestHandler):
    """Answers every POST with its own body, as JSON: the answer each case needs."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def echoed(tmp_path_factory):
    """A real nginx from the real templates, one endpoint per case, blue a backend that echoes its request."""
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoints = {f"/case{i}": Endpoint(predictions=case[1], confidence=case[2]) for i, case in enumerate(CASES)}
    settings = local_settings(tmp_path_factory.mktemp("echo"), blue_port=server.server_address[1], endpoints=endpoints)
    routing.write(settings.state_dir / routing.STATE_FILE, routing.RoutingState(green_weight=0, serial=1))
    nginx = LocalNginx(settings)
    nginx.write()
    child = Child("nginx", nginx.command(), settings.state_dir / "logs" / "nginx.log")
    try:
        child.start()
        wait_ready([child], {"nginx": f"{settings.url}/_nginx/ping"}, timeout=10)
        yield settings
    finally:
        child.stop()
        server.shutdown()


@pytest.mark.parametrize("number", range(len(CASES)), ids=[case[0] for case in CASES])
def test_nginx_reads_each_answer_as_python_does(echoed, number):
    name, path, confidence, answer, expected, expected_confidence = CASES[number]
    body = answer.encode() if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False).encode()
    response = httpx.post(f"{echoed.url}/case{number}", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200 and response.content == body
    rid = response.headers["x-request-id"]
    log = echoed.state_dir / "logs" / "access.log"
    entry = None
    for _ in range(50):  # nginx writes the line once the answer is sent
        entry = next((e for e in accesslog.parse(log.read_text()) if e["request_id"] == rid), None)
        if entry:
            break
        time.sleep(0.05)
    assert entry is not None, f"no log line for {rid}"
    read = json.loads(entry["predictions"]) if entry["predictions"] else None
    print(f"\n{name}: {len(body)} bytes; nginx read {str(read)[:120]}")
    assert entry["path"] == f"/case{number}"
    assert read == expected, (name, str(read)[:200])
    seen = json.loads(entry["confidence"]) if entry["confidence"] else None
    assert seen == expected_confidence, (name, str(seen)[:200])
