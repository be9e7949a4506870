"""Which version a backend serves, one table for every implementation of the rule (tests/data/readyz_answers.json:
answers to /readyz, each with the version it names or null). A real HTTP server on 127.0.0.1 sends each answer
byte for byte; it is read by readyz.serving (the local stack), by CURL_HEAD and readyz.version_from_curl (compose's
backends, asked with curl in their containers) and by `served()` of nginx/canary-state-init.sh run with sh and curl
(compose's first routing state)."""

from __future__ import annotations

import json
import re
import shutil
import socketserver
import subprocess
import threading

import pytest

from canary_kit.core.readyz import CURL_HEAD, serving, version_from_curl, version_in_head
from conftest import ROOT

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (make tools installs it)")
TABLE = json.loads((ROOT / "tests" / "data" / "readyz_answers.json").read_text())
IDS = [row["case"] for row in TABLE]


class Answers(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    answer = b""


class Answer(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(5)
        seen = b""
        while b"\r\n\r\n" not in seen and len(seen) < 65536:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            seen += chunk
        self.request.sendall(self.server.answer)


@pytest.fixture(scope="module")
def server():
    answers = Answers(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=answers.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield answers
    answers.shutdown()
    answers.server_close()


def answering(server: Answers, row: dict) -> str:
    """Make the server send `row`'s answer; returns its host:port."""
    head, body = row["head"], row.get("body", "")
    end = "\r\n" if "\r\n" in head else "\n"
    server.answer = f"{head}Content-Length: {len(body)}{end}Connection: close{end}{end}{body}".encode()
    return f"127.0.0.1:{server.server_address[1]}"


def shell_served() -> str:
    """The served() function of the compose init script, as its text."""
    script = (ROOT / "nginx" / "canary-state-init.sh").read_text()
    found = re.search(r"^served\(\) \{.*?^\}$", script, re.S | re.M)
    assert found, "served() not found in nginx/canary-state-init.sh"
    return found.group(0)


def test_the_table_covers_both_outcomes():
    assert {row["version"] is None for row in TABLE} == {True, False} and len(set(IDS)) == len(IDS)


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_serving_reads_the_version_as_the_table_says(server, row):
    assert serving(f"http://{answering(server, row)}") == row["version"]


@needs_curl
@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_the_head_as_curl_prints_it_names_the_version_as_the_table_says(server, row):
    done = subprocess.run(
        [*CURL_HEAD, "-m", "5", f"http://{answering(server, row)}/readyz"], capture_output=True, text=True, timeout=30
    )
    assert version_from_curl(done.returncode, done.stdout) == row["version"], done.stdout


def run_served(address: str) -> subprocess.CompletedProcess:
    """The init script's `served()`, run with sh (and curl) against `address`."""
    return subprocess.run(
        ["sh", "-c", f'{shell_served()}\nserved "$1"', "sh", address], capture_output=True, text=True, timeout=30
    )


@needs_curl
@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_the_init_scripts_served_reads_the_version_as_the_table_says(server, row):
    done = run_served(answering(server, row))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == row["version"], done.stdout


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_the_raw_head_names_the_version_as_the_table_says(row):
    assert version_in_head(row["head"]) == row["version"]


def test_nothing_answering_is_no_version():
    with socketserver.TCPServer(("127.0.0.1", 0), Answer) as closed:
        port = closed.server_address[1]
    assert serving(f"http://127.0.0.1:{port}") is None
    if shutil.which("curl"):
        assert run_served(f"127.0.0.1:{port}").stdout == "null"
