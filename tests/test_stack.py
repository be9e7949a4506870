"""The local canary stack end to end: real nginx in front of two real `bentoml serve` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from canary_kit.cli.app import app
from canary_kit.core import accesslog
from canary_kit.observe.metrics import Snapshot
from conftest import EXAMPLE_ROW, ROOT, canary_process, free_port, local_settings
from load import Load, assert_split, tally

pytestmark = pytest.mark.integration
VERSION_OF = {"blue": "v1.0.0", "green": "v1.1.0"}


def free_ports() -> dict[str, str]:
    """CANARY_* variables giving a `canary up` process free ports for nginx and every slot."""
    names = ("CANARY_PORT", "CANARY_BLUE_PORT", "CANARY_GREEN_PORT", "CANARY_GREEN_PORT_B")
    return {name: str(free_port()) for name in names}


SLOT_OF = {"blue": "blue", "green": "green_a"}  # a fresh stack


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
    assert response.headers["x-canary-upstream"] == f"127.0.0.1:{stack.settings.slot_port(SLOT_OF[route])}"
    assert len(response.headers["x-request-id"]) == 32
    assert response.headers["server"] == "nginx"  # server_tokens off: no version number


def test_nginx_refuses_an_oversized_body_with_json(stack):
    response = httpx.post(
        f"{stack.settings.url}/predict", content=b"x" * (2 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and "larger than" in response.json()["error"]


def test_access_log_is_one_json_object_per_request(stack):
    ids = {}
    with httpx.Client() as client:
        for _ in range(20):
            r = client.post(f"{stack.settings.url}/predict", json={"instances": [EXAMPLE_ROW]})
            ids[r.headers["x-request-id"]] = r.headers["x-model-version"]
    time.sleep(0.2)
    log = (stack.settings.state_dir / "logs" / "access.log").read_text()
    entries = {e["request_id"]: e for e in accesslog.parse(log)}
    for request_id, version in ids.items():
        entry = entries[request_id]
        assert entry["version"] == version and entry["status"] == 200, entry
        assert {"time", "upstream", "route", "upstream_response_time", "request_time"} <= set(entry)


def test_each_backend_metrics_count_only_what_it_served(stack):
    """Separate BENTOML_HOMEs: blue's /metrics must not report green's requests (the shared-folder trap)."""

    def snap(color):
        return Snapshot.parse(httpx.get(f"{stack.settings.slot_url(SLOT_OF[color])}/metrics").text)

    before = {color: snap(color) for color in VERSION_OF}
    load = Load(stack.settings.url, workers=4, max_requests=600, max_seconds=120).run()
    served = tally(load.answers)
    after = {color: snap(color) for color in VERSION_OF}
    counted = {VERSION_OF[c]: sum(after[c].by_status.values()) - sum(before[c].by_status.values()) for c in VERSION_OF}
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
    env = {**os.environ, **free_ports(), "CANARY_STATE_DIR": str(tmp_path)}
    argv = [sys.executable, "-m", "canary_kit", "up"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, lines = time.monotonic() + 120, []
        while time.monotonic() < deadline and not any("ready in" in line for line in lines):
            line = proc.stdout.readline()
            assert line, f"canary up ended early: {''.join(lines)}"
            lines.append(line)
        tree = psutil.Process(proc.pid).children(recursive=True)  # serve processes, their workers, nginx
        assert len(tree) >= 6, tree
        url = f"http://127.0.0.1:{env['CANARY_PORT']}"
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


class Pollers:
    """Clients that POST /predict to `url` in a loop from before the stack starts (keep-alive, never resending),
    each answer kept with the moment it was sent; a refused connection is retried after 10 ms."""

    def __init__(self, url: str, workers: int = 4, max_seconds: float = 180) -> None:
        self.url, self.answers, self._stop = url, [], threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def _work(self) -> None:
        transport = httpx.HTTPTransport(retries=0)
        with httpx.Client(timeout=15, transport=transport) as client:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                sent = time.monotonic()
                try:
                    status = client.post(f"{self.url}/predict", json={"instances": [EXAMPLE_ROW]}).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.answers.append((sent, status))
                if status != 200:
                    time.sleep(0.01)

    def sent_after(self, moment: float, count: int, timeout: float = 120) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            after = sorted(a for a in list(self.answers) if a[0] >= moment)
            if len(after) >= count:
                return after[:count]
            time.sleep(0.05)
        return sorted(a for a in list(self.answers) if a[0] >= moment)

    def __enter__(self) -> Pollers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def start_up(env: dict) -> tuple[subprocess.Popen, float, list[str]]:
    """`canary up` as a process; returns it with the moment it said it was ready."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "canary_kit", "up"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, f"canary up ended early: {''.join(lines)}"
        lines.append(line)
        if "ready in" in line:
            return proc, time.monotonic(), lines
    raise AssertionError(f"canary up not ready in 120 s: {''.join(lines)}")


def stop_up(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def test_ready_means_ready_and_the_last_split_survives_a_restart(trained, tmp_path):
    """Clients poll :PORT throughout `canary up`: the first 1,000 requests sent after "ready" all succeed. Then
    a change, a restart, and the stack comes back with that split (nginx applies it, `canary status` says so)."""
    env = {**os.environ, **free_ports(), "CANARY_STATE_DIR": str(tmp_path)}
    url = f"http://127.0.0.1:{env['CANARY_PORT']}"
    proc = None
    try:
        with Pollers(url) as pollers:
            proc, ready_at, _ = start_up(env)
            after = pollers.sent_after(ready_at, 1000)
        before = Counter(status for sent, status in pollers.answers if sent < ready_at)
        statuses = Counter(status for _, status in after)
        print(f"\nwhile starting: {dict(before)}; the first {len(after)} requests sent after ready: {dict(statuses)}")
        assert statuses == {200: 1000}, statuses

        result = canary_process(tmp_path, "set-weight", "35", "-m", "before the restart")
        assert result.returncode == 0, result.stderr
        stop_up(proc)
        proc, _, lines = start_up(env)
        report = json.loads(canary_process(tmp_path, "status", "--json").stdout)
        print(f"after the restart: {lines[1].strip()}; nginx applies {report['nginx']}")
        assert "(green gets 35%)" in lines[1]
        assert report["nginx"]["green_weight"] == 35 and report["green_weight"] == 35
        with httpx.Client() as client:
            seen = Counter(client.get(f"{url}/health").json()["model_version"] for _ in range(400))
        print(f"400 requests after the restart: {dict(seen)}")
        assert_split(seen["v1.1.0"], 400, 35)
        stop_up(proc)
        proc = None
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stopping_a_slot_leaves_a_strangers_server_on_its_port_alone(own_stack):
    """Only processes carrying the kit's mark (CANARY_COMPONENT) are stopped: not any listener on a slot's port
    whose command line says "bentoml"."""
    from canary_kit.core.processes import port_in_use
    from canary_kit.stacks.backends import retire

    s = own_stack.settings
    port = s.slot_port("green_b")  # free in a fresh stack: `canary deploy` retires it before it starts there
    code = f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(120)"
    stranger = subprocess.Popen([sys.executable, "-c", code, "bentoml", "serve", "not-ours"])
    try:
        deadline = time.monotonic() + 10
        while not port_in_use("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
        retire(s, "green_b")
        alive_after_retire = stranger.poll() is None
        own_stack.stop()
        alive_after_stop = stranger.poll() is None
        print(
            f"\nthe stranger on {port} after retire: {alive_after_retire}; after the stack stopped: {alive_after_stop}"
        )
        assert alive_after_retire and alive_after_stop
    finally:
        stranger.kill()
        stranger.wait()
