"""Canary control on a running local stack: changes under keep-alive load with no reload and no failed request,
every worker applying a change at once, pins, stickiness, refusals, concurrency, kill-safety, status."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

import httpx
import pytest
from typer.testing import CliRunner

from canary_kit.cli.app import app
from canary_kit.core import routing
from canary_kit.stacks.nginx import OPERATOR_URL, operator_transport
from canary_kit.stacks.targets import LocalTarget
from canary_kit.steer.control import split_of
from conftest import EXAMPLE_ROW, ROOT, canary_process, nginx_applies, nginx_pids
from load import Load, assert_split, tally

pytestmark = pytest.mark.integration


def canary(stack, *args: str):
    return CliRunner().invoke(app, [*args, "--state-dir", str(stack.settings.state_dir)])


@pytest.fixture
def control(stack):
    """The shared stack at its default 10%, put back to 10% after each test."""
    assert canary(stack, "set-weight", "10").exit_code == 0
    try:
        yield stack
    finally:
        canary(stack, "set-weight", "10")


def state_hashes(stack) -> dict[str, str]:
    state = stack.settings.state_dir
    files = (routing.STATE_FILE, "canary.conf", "nginx.conf")
    return {name: hashlib.sha256((state / name).read_bytes()).hexdigest() for name in files}


def test_changes_under_keepalive_clients_that_never_retry_fail_nothing_and_reload_nothing(control):
    """16 keep-alive clients that never resend, while 20 weight changes, a promote and a rollback run, each as its
    own `canary` process: no failed request, the same nginx workers throughout, and after promote (rollback) only
    green (blue) answers."""
    state_dir = control.settings.state_dir
    pids_before = nginx_pids(control)
    weights = random.Random(10).choices(range(0, 101), k=20)
    with Load(control.settings.url, workers=16, max_requests=400_000, max_seconds=400) as load:
        load.wait_for(0, 100)
        for weight in weights:
            result = canary_process(state_dir, "set-weight", str(weight), "-m", "test")
            assert result.returncode == 0, result.stderr
            load.wait_for(time.monotonic(), 40, timeout=60)
        after = {}
        for command in ("promote", "rollback"):
            result = canary_process(state_dir, command, "-m", f"test {command}")
            assert result.returncode == 0, result.stderr
            after[command] = tally(load.wait_for(time.monotonic(), 300, timeout=120))
    pids_after = nginx_pids(control)
    everything = tally(load.answers)
    print(
        f"\n{len(load.answers)} requests from 16 clients during 20 changes, promote and rollback: {dict(everything)}"
        f"\nafter promote: {dict(after['promote'])}; after rollback: {dict(after['rollback'])}"
        f"\nnginx master and workers before {pids_before}, after {pids_after}"
    )
    assert not load.failed(), f"failed requests: {everything}"
    assert after["promote"] == {"v1.1.0": 300} and after["rollback"] == {"v1.0.0": 300}, after
    assert pids_after == pids_before, "nginx was reloaded or restarted"
    records = [json.loads(line) for line in (state_dir / "changes.log").read_text().splitlines()[-22:]]
    assert [r["new_green_weight"] for r in records] == [*weights, 100, 0]
    assert records[-1]["old_green_weight"] == 100 and records[-1]["reason"] == "test rollback"


def test_weight_changes_hold_their_split_for_the_requests_after_them(control):
    """10 -> 50 -> 0 -> 100 -> 10 under 8 clients; judge each step on the requests sent after it returned."""
    steps, per_step, report = [10, 50, 0, 100, 10], 300, []
    # The count only bounds the load: with the ONNX runtime the stack answers ~1,500 requests/s, so each change
    # (about a second) passes well over per_step requests before the step's own per_step are counted.
    with Load(control.settings.url, workers=8, max_requests=per_step * 60, max_seconds=400) as load:
        load.wait_for(0, 50)
        for weight in steps:
            assert canary(control, "set-weight", str(weight), "--reason", "test").exit_code == 0
            answers = load.wait_for(time.monotonic(), per_step, timeout=120)
            counts = tally(answers)
            report.append((weight, dict(counts)))
            assert counts["v1.0.0"] + counts["v1.1.0"] == per_step, f"failed or missing requests: {report}"
            assert_split(counts["v1.1.0"], per_step, weight)
    print(f"\nper step (weight, counts after it returned): {report}")
    assert not load.failed(), tally(load.answers)


def test_the_split_through_the_backends_at_50_percent(control):
    assert canary(control, "set-weight", "50").exit_code == 0
    load = Load(control.settings.url, workers=8, max_requests=2000, max_seconds=240).run()
    counts = tally(load.answers)
    print(f"\n2000 requests at 50%: {dict(counts)}")
    assert counts["v1.0.0"] + counts["v1.1.0"] == 2000, counts
    assert_split(counts["v1.1.0"], 2000, 50)


def test_every_worker_applies_a_change_on_its_next_request(control):
    """48 keep-alive connections, spread over all nginx workers; the first request each sends after `set-weight`
    returns already goes where the new state says (nginx reads the state file per request)."""
    _, workers = nginx_pids(control)
    url, log = control.settings.url, control.settings.state_dir / "logs" / "access.log"
    assert canary(control, "set-weight", "0").exit_code == 0
    clients = [httpx.Client(timeout=10) for _ in range(48)]
    try:
        before = [c.get(f"{url}/health").headers["x-canary-route"] for c in clients]  # opens the connections
        mark = log.stat().st_size
        result = canary(control, "set-weight", "100")
        returned = time.monotonic()
        assert result.exit_code == 0, result.output
        answers = [(c.get(f"{url}/health"), (time.monotonic() - returned) * 1000) for c in clients]
    finally:
        for client in clients:
            client.close()
    time.sleep(0.2)
    with open(log, "rb") as handle:
        handle.seek(mark)
        served_by = {json.loads(line)["worker"] for line in handle.read().splitlines() if line.startswith(b"{")}
    routes = Counter(response.headers["x-canary-route"] for response, _ in answers)
    print(
        f"\nbefore the change: {dict(Counter(before))}; the first request of each of 48 connections after it: "
        f"{dict(routes)}, served by workers {sorted(served_by)} of {workers}, the last "
        f"{max(ms for _, ms in answers):.1f} ms after the command returned"
    )
    assert set(before) == {"blue"} and routes == {"green": 48}
    assert served_by == set(workers), "the connections did not reach every worker"


def test_concurrent_changes_never_interleave(control):
    """Eight `canary set-weight` processes at once: each change starts from the one before it, none is lost."""
    weights = [5, 15, 25, 35, 45, 55, 65, 75]
    log = control.settings.state_dir / "changes.log"
    lines_before = len(log.read_text().splitlines())
    start_serial = routing.read(control.settings.state_dir / routing.STATE_FILE).serial
    results = {}
    threads = [
        threading.Thread(
            target=lambda w=w: results.update({w: canary_process(control.settings.state_dir, "set-weight", str(w))})
        )
        for w in weights
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(r.returncode == 0 for r in results.values()), {w: r.stderr for w, r in results.items()}
    records = [json.loads(line) for line in log.read_text().splitlines()[lines_before:]]
    chain = [(r["old_green_weight"], r["new_green_weight"], r["serial"]) for r in records]
    print(f"\nchanges in the order they took effect (old, new, serial): {chain}")
    assert sorted(r["new_green_weight"] for r in records) == weights
    assert [r["serial"] for r in records] == list(range(start_serial + 1, start_serial + 9))
    for earlier, later in zip(records, records[1:]):
        assert later["old_green_weight"] == earlier["new_green_weight"], chain
    assert split_of(LocalTarget(control.settings.state_dir)) == (records[-1]["new_green_weight"], False)


@pytest.mark.parametrize(
    "args,message",
    [
        (["set-weight", "150"], "Invalid value for 'weight'"),
        (["set-weight", "-1"], "Invalid value for 'weight'"),
        (["set-weight", "abc"], "Invalid value for 'weight'"),
        (["set-weight", "12.5"], "Invalid value for 'weight'"),
        (["set-weight"], "Missing argument"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_values_are_refused_and_the_state_is_untouched(control, args, message):
    before = state_hashes(control)
    result = canary(control, *args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: {message}") and result.output.count("\n") == 1, result.output
    assert state_hashes(control) == before


def test_a_stack_that_is_not_running_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["rollback", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1 and result.output.startswith("error: the canary stack is not running"), result.output


def test_killing_the_tool_never_leaves_a_half_written_state(control):
    """SIGKILL `canary set-weight` at random moments: the state is always the old one or the new one, whole."""
    state_file = control.settings.state_dir / routing.STATE_FILE
    rng = random.Random(7)
    outcomes = Counter()
    for attempt in range(12):
        weight = 60 if attempt % 2 == 0 else 10
        argv = [
            sys.executable,
            "-m",
            "canary_kit",
            "set-weight",
            str(weight),
            "--state-dir",
            str(control.settings.state_dir),
        ]
        proc = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.2, 1.2))  # the tool needs about 0.6 s here: kill it before, during and after
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = routing.read(state_file)
        assert state is not None and state.green_weight in (10, 60), f"attempt {attempt}: {state_file.read_text()!r}"
        outcomes[state.green_weight] += 1
        assert state.green_weight == nginx_applies(control.settings)["green_weight"]
    print(f"\nstate after 12 killed changes: {dict(outcomes)}")
    assert canary(control, "set-weight", "10").exit_code == 0  # the tool carries on from any of them
    leftovers = [p.name for p in state_file.parent.glob(f".{state_file.name}.*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_header_and_cookie_pins_beat_the_weight(control):
    """Through the admin socket (the operator's way in: pins apply there with pins off on the public port, and reach
    a version at 0%); tests/test_pins.py has the public port's rules."""

    def versions(weight, headers=None, cookies=None, n=40):
        assert canary(control, "set-weight", str(weight)).exit_code == 0
        transport = operator_transport(control.settings)
        with httpx.Client(headers=headers, cookies=cookies, transport=transport) as client:
            return Counter(client.get(f"{OPERATOR_URL}/health").json()["model_version"] for _ in range(n))

    assert versions(0, headers={"X-Canary": "always"}) == {"v1.1.0": 40}
    assert versions(100, headers={"X-Canary": "never"}) == {"v1.0.0": 40}
    assert versions(0, cookies={"canary": "always"}) == {"v1.1.0": 40}
    assert versions(100, cookies={"canary": "never"}) == {"v1.0.0": 40}
    # header wins over cookie; an unknown header value falls through to the cookie, then to the weight
    assert versions(0, headers={"X-Canary": "never"}, cookies={"canary": "always"}) == {"v1.0.0": 40}
    assert versions(0, headers={"X-Canary": "maybe"}, cookies={"canary": "always"}) == {"v1.1.0": 40}
    assert versions(0, headers={"X-Canary": "maybe"}) == {"v1.0.0": 40}


def test_users_are_sticky_and_stay_on_green_as_the_weight_rises(control):
    """Through the admin socket, where pins (sticky users among them) apply; on the public port they do when the
    operator turns pins on (tests/test_nginx.py)."""
    users = [f"user-{i}" for i in range(60)]

    def assignment(weight):
        assert canary(control, "set-weight", str(weight)).exit_code == 0
        seen = defaultdict(set)
        with httpx.Client(transport=operator_transport(control.settings)) as client:
            for _ in range(3):
                for user in users:
                    r = client.get(f"{OPERATOR_URL}/health", headers={"X-User-ID": user})
                    seen[user].add(r.json()["model_version"])
        assert all(len(v) == 1 for v in seen.values()), {u: v for u, v in seen.items() if len(v) > 1}
        return {u for u, v in seen.items() if v == {"v1.1.0"}}

    green_at_10, green_at_50 = assignment(10), assignment(50)
    print(f"\nusers on green: {len(green_at_10)} of 60 at 10%, {len(green_at_50)} at 50%")
    assert green_at_10 <= green_at_50, green_at_10 - green_at_50
    assert 0 < len(green_at_50) < 60


def test_a_corrupt_state_sends_all_to_blue_status_says_so_and_a_change_repairs_it(control):
    state_file = control.settings.state_dir / routing.STATE_FILE
    assert canary(control, "set-weight", "50").exit_code == 0
    state_file.write_text('{"green_weight": 50, "shad')  # as a careless hand edit would leave it
    with httpx.Client() as client:
        seen = Counter(client.get(f"{control.settings.url}/health").json()["model_version"] for _ in range(100))
    table = canary(control, "status")
    print(f"\n100 requests with a corrupt state file: {dict(seen)}\n{table.output}")
    assert seen == {"v1.0.0": 100}
    assert "nginx sends everything to blue" in table.output and "blue 100% / green 0%" in table.output
    assert canary(control, "set-weight", "10").exit_code == 0
    assert routing.read(state_file).green_weight == 10


def test_status_reports_the_split_nginx_applies_health_and_figures(control):
    with httpx.Client() as client:
        for _ in range(100):
            client.post(f"{control.settings.url}/predict", json={"instances": [EXAMPLE_ROW]})
    report = json.loads(canary(control, "status", "--json").output)
    blue, green = report["backends"]["blue"], report["backends"]["green"]
    assert report["green_weight"] == 10 and blue["weight"] == 90
    assert report["nginx"]["green_weight"] == 10 and report["nginx"]["serial"] == report["state_file"]["serial"]
    assert blue["healthy"] and green["healthy"]
    assert blue["since_change"]["requests"] + green["since_change"]["requests"] == 100, report
    assert blue["since_change"]["p99_ms"] is not None and blue["since_change"]["errors"] == 0
    table = canary(control, "status").output
    assert "blue 90% / green 10%" in table and "v1.1.0" in table, table
