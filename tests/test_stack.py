"""The local canary stack end to end: real nginx in front of two real `bentoml serve` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from canary_kit.cli import app
from canary_kit.metrics import Snapshot
from conftest import ROOT, EXAMPLE_ROW, free_port, local_settings
from load import Load, assert_split, tally

pytestmark = pytest.mark.integration
VERSION_OF = {"blue": "v1.0.0", "green": "v1.1.0"}


def test_split_is_90_10_and_every_request_succeeds(stack):
    load = Load(stack.settings.url, workers=8, max_requests=2000, max_seconds=240).run()
    counts = tally(load.answers)
    print(f"\n2000 requests through nginx: {dict(counts)}")
    assert sum(counts.values()) == 2000, counts
    assert counts["v1.0.0"] + counts["v1.1.0"] == 2000, f"failed requests: {counts}"
    assert_split(counts["v1.1.0"], 2000, 10)
    assert all(VERSION_OF[a.route] == a.version for a in load.answers), "route header disagrees with version"


def test_health_loop_shows_both_versions_mostly_blue(stack):
    with httpx.Client() as client:
        seen = Counter(client.get(f"{stack.settings.url}/health").json()["model_version"] for _ in range(300))
    print(f"\n300 GET /health: {dict(seen)}")
    assert set(seen) == {"v1.0.0", "v1.1.0"} and seen["v1.0.0"] > seen["v1.1.0"], seen
    assert_split(seen["v1.1.0"], 300, 10)


def test_nginx_adds_route_upstream_and_request_id(stack):
    response = httpx.post(f"{stack.settings.url}/predict", json={"instances": [EXAMPLE_ROW]})
    route = response.headers["x-canary-route"]
    assert response.headers["x-model-version"] == VERSION_OF[route] == response.json()["model_version"]
    assert response.headers["x-canary-upstream"] == f"127.0.0.1:{stack.settings.backend_port(route)}"
    assert len(response.headers["x-request-id"]) == 32
    assert response.headers["server"] == "nginx"  # server_tokens off: no version number


def test_nginx_refuses_an_oversized_body_with_json(stack):
    response = httpx.post(f"{stack.settings.url}/predict", content=b"x" * (2 * 1024 * 1024),
                          headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["error"]


def test_access_log_is_one_json_object_per_request(stack):
    ids = {}
    with httpx.Client() as client:
        for _ in range(20):
            r = client.post(f"{stack.settings.url}/predict", json={"instances": [EXAMPLE_ROW]})
            ids[r.headers["x-request-id"]] = r.headers["x-model-version"]
    time.sleep(0.2)
    lines = (stack.settings.state_dir / "logs" / "access.log").read_text().splitlines()
    entries = {e["request_id"]: e for e in map(json.loads, lines)}
    for request_id, version in ids.items():
        entry = entries[request_id]
        assert entry["version"] == version and entry["status"] == 200, entry
        assert {"time", "upstream", "route", "upstream_response_time", "request_time"} <= set(entry)


def test_each_backend_metrics_count_only_what_it_served(stack):
    """Separate BENTOML_HOMEs: blue's /metrics must not report green's requests (the shared-folder trap)."""

    def snap(color):
        return Snapshot.parse(httpx.get(f"{stack.settings.backend_url(color)}/metrics").text)

    before = {color: snap(color) for color in VERSION_OF}
    load = Load(stack.settings.url, workers=4, max_requests=600, max_seconds=120).run()
    served = tally(load.answers)
    after = {color: snap(color) for color in VERSION_OF}
    counted = {
        VERSION_OF[c]: sum(after[c].by_status.values()) - sum(before[c].by_status.values()) for c in VERSION_OF
    }
    print(f"\nclient saw {dict(served)}; backends' /metrics counted {counted}")
    assert counted == {"v1.0.0": served["v1.0.0"], "v1.1.0": served["v1.1.0"]}


def test_refuses_a_port_in_use_in_one_line(trained, tmp_path):
    import socket

    settings = local_settings(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", settings.port))
        taken.listen()
        result = CliRunner().invoke(app, ["up", "--port", str(settings.port), "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: port {settings.port} on 127.0.0.1 (nginx) is already in use"


def test_refuses_without_nginx_in_one_line(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("CANARY_NGINX_BIN", "/nonexistent/nginx")
    result = CliRunner().invoke(app, ["up", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.startswith("error: nginx is not installed") and result.output.count("\n") == 1


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_canary_up_runs_in_foreground_and_stops_everything(trained, tmp_path, stop_signal):
    ports = {"CANARY_PORT": free_port(), "CANARY_BLUE_PORT": free_port(), "CANARY_GREEN_PORT": free_port()}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "CANARY_STATE_DIR": str(tmp_path)}
    argv = [sys.executable, "-m", "canary_kit.cli", "up"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, lines = time.monotonic() + 120, []
        while time.monotonic() < deadline and not any("ready in" in line for line in lines):
            line = proc.stdout.readline()
            assert line, f"canary up ended early: {''.join(lines)}"
            lines.append(line)
        tree = psutil.Process(proc.pid).children(recursive=True)  # serve processes, their workers, nginx
        assert len(tree) >= 6, tree
        url = f"http://127.0.0.1:{ports['CANARY_PORT']}"
        assert httpx.post(f"{url}/predict", json={"instances": [EXAMPLE_ROW]}).status_code == 200
        proc.send_signal(stop_signal)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, "".join(lines) + out
        assert "stopped" in out
        _, alive = psutil.wait_procs(tree, timeout=5)
        assert not alive, f"processes left behind: {[p.pid for p in alive]}"
        assert not (tmp_path / "stack.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
