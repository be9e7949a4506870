"""Supervision: `canary up` restarts what dies, leaves no orphan, and never lets the candidate take over silently.

Each test runs `canary up` as its own process on free ports, under 16 keep-alive clients that never resend, kills
something with SIGKILL, and prints the figures it judged on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import Counter

import httpx
import psutil
import pytest

from canary_kit.core.processes import stack_processes
from canary_kit.stacks.targets import LocalTarget
from canary_kit.steer.control import takeover
from conftest import EXAMPLE_ROW, canary_process
from load import Load, assert_split, tally
from test_stack import free_ports, start_up

pytestmark = pytest.mark.integration
CLIENTS = 16


def stack_json(state_dir) -> dict:
    return json.loads((state_dir / "stack.json").read_text())


def wait_until(check, timeout: float, step: float = 0.05) -> float | None:
    """Seconds until `check()` is true (polled every `step`), or None after `timeout`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if check():
            return time.monotonic() - began
        time.sleep(step)
    return None


def answers(url: str) -> str | None:
    """The version answering GET /readyz at `url`, on a fresh connection (None: no answer)."""
    try:
        r = httpx.get(f"{url}/readyz", timeout=1, headers={"Connection": "close"})
    except httpx.HTTPError:
        return None
    return r.headers.get("x-model-version") if r.status_code == 200 else None


def gone(procs: list[psutil.Process]) -> bool:
    return not any(_exists(p) for p in procs)


def _exists(proc: psutil.Process) -> bool:
    """Still running (the same process, not a zombie)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def history(state_dir) -> list[dict]:
    return [json.loads(line) for line in (state_dir / "changes.log").read_text().splitlines()]


def failed(load_answers) -> list:
    return [a for a in load_answers if a.status != 200]


class UpStack:
    """`canary up` as a process, stopped (and everything of its stack with it) whatever happens."""

    def __init__(self, state_dir, **env) -> None:
        self.state_dir = state_dir
        self.env = {**os.environ, **free_ports(), "CANARY_STATE_DIR": str(state_dir), **env}
        self.url = f"http://127.0.0.1:{self.env['CANARY_PORT']}"
        self.slot_url = {
            name: f"http://127.0.0.1:{self.env[var]}"
            for name, var in (
                ("blue", "CANARY_BLUE_PORT"),
                ("green_a", "CANARY_GREEN_PORT"),
                ("green_b", "CANARY_GREEN_PORT_B"),
            )
        }
        self.proc = None

    def __enter__(self) -> UpStack:
        self.proc, _, _ = start_up(self.env)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.communicate(timeout=60)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        from canary_kit.stacks.supervise import down

        down(self.state_dir)


def private_store(bentoml_home, tmp_path):
    """A model store of the test's own (a copy), so that the test can remove a version from it."""
    home = tmp_path / "home"
    shutil.copytree(bentoml_home / "models", home / "models", symlinks=True)
    return home


def test_killing_blues_worker_fails_nothing_and_blue_is_back_within_10s(trained, tmp_path):
    with UpStack(tmp_path) as up, Load(up.url, workers=CLIENTS, max_requests=200_000, max_seconds=180) as load:
        blue = stack_json(tmp_path)["backends"]["blue"]
        worker = psutil.Process(blue["pid"]).children()[0]
        load.wait_for(0, 300)
        killed = time.monotonic()
        worker.kill()
        back = wait_until(
            lambda: (
                answers(up.slot_url["blue"]) == "v1.0.0"
                and worker.pid not in [p.pid for p in psutil.Process(blue["pid"]).children()]
            ),
            30,
        )
        after = load.wait_for(time.monotonic(), 1000, timeout=120)
        load._stop.set()
    during = [a for a in load.answers if a.sent >= killed]
    counts = tally(after)
    print(
        f"\nblue's worker killed: blue back in {back}s; {len(load.answers)} requests, failed "
        f"{len(failed(load.answers))} ({len(failed(during))} sent after the kill); the 1000 sent after blue was "
        f"back: {dict(counts)}"
    )
    assert back is not None and back <= 10, back
    assert not failed(load.answers), Counter(a.error[:80] for a in failed(load.answers))
    assert_split(counts["v1.1.0"], 1000, 10)


def test_killing_blues_serve_process_takes_its_workers_and_restarts_it(trained, tmp_path):
    with UpStack(tmp_path) as up, Load(up.url, workers=CLIENTS, max_requests=200_000, max_seconds=180) as load:
        blue = stack_json(tmp_path)["backends"]["blue"]
        old = tree(blue["pid"])
        load.wait_for(0, 300)
        old[0].kill()
        orphans_gone = wait_until(lambda: gone(old), 30)
        back = wait_until(
            lambda: (
                stack_json(tmp_path)["backends"]["blue"]["pid"] != blue["pid"]
                and answers(up.slot_url["blue"]) == "v1.0.0"
            ),
            30,
        )
        back = None if back is None else back + (orphans_gone or 0)
        new = stack_json(tmp_path)["backends"]["blue"]
        after = load.wait_for(time.monotonic(), 1000, timeout=120)
        load._stop.set()
        status = canary_process(tmp_path, "status").stdout
    restarts = [e for e in history(tmp_path) if e["event"] in ("exit", "restart") and e.get("component") == "blue"]
    counts = tally(after)
    print(
        f"\nblue's `bentoml serve` killed ({len(old)} processes): all of them gone in {orphans_gone}s, blue back in "
        f"{back}s as pid {new['pid']}; failed {len(failed(load.answers))} of {len(load.answers)}; "
        f"1000 after: {dict(counts)}\nhistory: {[e['reason'] for e in restarts]}\n{status}"
    )
    assert orphans_gone is not None and gone(old)
    assert back is not None and back <= 10, back
    assert [e["event"] for e in restarts] == ["exit", "restart"], restarts
    assert new["restarts"] == 1 and "killed by SIGKILL" in new["last_exit"], new
    assert "killed by SIGKILL" in status and not failed(after), status
    assert not failed(load.answers), Counter(a.error[:80] for a in failed(load.answers))


def test_killing_the_nginx_master_takes_its_workers_and_restarts_it_within_2s(trained, tmp_path):
    with UpStack(tmp_path) as up, Load(up.url, workers=CLIENTS, max_requests=200000, max_seconds=180) as load:
        master = stack_json(tmp_path)["nginx"]["pid"]
        old = tree(master)
        load.wait_for(0, 300)
        killed = time.monotonic()
        old[0].kill()

        def new_nginx_answers() -> bool:
            pid = stack_json(tmp_path)["nginx"]["pid"]
            if pid == master or not gone(old[1:]):
                return False
            try:
                return httpx.get(f"{up.url}/_nginx/ping", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        back = wait_until(new_nginx_answers, 30, step=0.01)
        back_at = killed + (back or 0)
        after = load.wait_for(back_at, 2000, timeout=120)
        load._stop.set()
    before = [a for a in load.answers if killed - 15 <= a.sent < back_at]  # a request takes at most 15 s
    refused = [a for a in failed(before) if "ConnectError" in a.error]
    print(
        f"\nnginx's master killed ({len(old) - 1} workers): old workers gone and a new nginx answering in {back}s; "
        f"failed before it was back: {len(failed(before)) - len(refused)} on a connection open when nginx died "
        f"({dict(Counter(a.error[:40] for a in failed(before) if a not in refused))}), {len(refused)} refused "
        f"connects while no nginx listened; the {len(after)} sent after it was back: {dict(tally(after))}"
    )
    assert back is not None and back <= 2.0, back
    assert len(after) == 2000 and not failed(after), tally(after)


def test_killing_the_supervisor_leaves_nothing_and_up_starts_again(trained, tmp_path):
    with UpStack(tmp_path) as up:
        procs = up.proc and psutil.Process(up.proc.pid).children(recursive=True)
        up.proc.kill()
        up.proc.wait()
        cleared = wait_until(lambda: gone(procs) and not stack_processes(tmp_path), 10)
        print(f"\ncanary up killed with SIGKILL: its {len(procs)} processes gone in {cleared}s")
        assert cleared is not None and cleared <= 5, [p for p in procs if _exists(p)]
        result = canary_process(tmp_path, "down")
        print(f"canary down then: {result.stdout.strip()}")
        assert result.returncode == 0 and result.stdout.startswith("nothing of a canary stack runs")
        up.proc, began, _ = start_up(up.env)
        print("canary up again: ready")
        assert httpx.post(f"{up.url}/predict", json={"instances": [dict(EXAMPLE_ROW)]}).status_code == 200


def test_up_on_a_live_folder_says_so_and_down_stops_it(trained, tmp_path):
    with UpStack(tmp_path) as up:
        procs = psutil.Process(up.proc.pid).children(recursive=True)
        again = canary_process(tmp_path, "up")
        print(f"\nsecond canary up: exit {again.returncode}: {again.stderr.strip()}")
        assert again.returncode == 1 and again.stderr.count("\n") == 1
        assert "already running" in again.stderr and "canary down" in again.stderr
        down = canary_process(tmp_path, "down")
        print(f"canary down: {down.stdout.strip()}")
        assert down.returncode == 0 and "stopped canary up" in down.stdout
        assert up.proc.wait(timeout=30) == 0
        assert wait_until(lambda: gone(procs), 5) is not None and not stack_processes(tmp_path)
        assert not (tmp_path / "stack.json").exists()


def test_a_green_crashing_at_every_start_backs_off_to_the_limit_while_blue_answers_all(trained, bentoml_home, tmp_path):
    home = private_store(bentoml_home, tmp_path)
    state = tmp_path / "state"
    settings = dict(
        CANARY_BENTOML_HOME=str(home),
        CANARY_RESTART_DELAY="0.5",
        CANARY_RESTART_DELAY_MAX="2",
        CANARY_RESTART_LIMIT="3",
    )
    with UpStack(state, **settings) as up, Load(up.url, workers=CLIENTS, max_requests=200000, max_seconds=240) as load:
        green = stack_json(state)["backends"]["green_a"]
        shutil.rmtree(home / "models" / "penguin_classifier" / "v1.1.0")
        load.wait_for(0, 200)
        psutil.Process(green["pid"]).kill()
        took = wait_until(lambda: "gave up" in stack_json(state)["backends"]["green_a"].get("state", ""), 120, 0.2)
        load._stop.set()
        status = canary_process(state, "status")
    events = [e for e in history(state) if e.get("component") == "green_a"]
    delays = [e["delay_s"] for e in events if e["event"] == "exit"]
    entry = stack_json(state)["backends"]["green_a"] if (state / "stack.json").exists() else {}
    print(
        f"\ngreen's model removed, green killed: gave up after {took}s; restart delays {delays}, then "
        f"{events[-1]['event']}; {len(load.answers)} requests, failed {len(failed(load.answers))}: "
        f"{dict(tally(load.answers))}\n{status.stdout}"
    )
    assert took is not None, entry
    assert delays == [0.0, 0.5, 1.0] and events[-1]["event"] == "gave-up", [(e["event"], e["reason"]) for e in events]
    assert "gave up after 3 restarts" in status.stdout and "not in the model store" in status.stdout
    assert not failed(load.answers), Counter(a.error[:80] for a in failed(load.answers))


def test_status_says_first_when_blue_is_down_and_green_answers_its_share(trained, bentoml_home, tmp_path):
    home = private_store(bentoml_home, tmp_path)
    state = tmp_path / "state"
    settings = dict(
        CANARY_BENTOML_HOME=str(home),
        CANARY_RESTART_DELAY="0.5",
        CANARY_RESTART_DELAY_MAX="1",
        CANARY_RESTART_LIMIT="100",
    )
    model = home / "models" / "penguin_classifier" / "v1.0.0"
    with UpStack(state, **settings) as up, Load(up.url, workers=CLIENTS, max_requests=200000, max_seconds=240) as load:
        shutil.move(model, tmp_path / "v1.0.0")  # blue cannot start again until it is back
        psutil.Process(stack_json(state)["backends"]["blue"]["pid"]).kill()
        said = wait_until(lambda: canary_process(state, "status").stdout.startswith("BLUE IS DOWN"), 30, 0.5)
        first = canary_process(state, "status").stdout.splitlines()[0]
        found = takeover(LocalTarget(state))
        shutil.move(tmp_path / "v1.0.0", model)
        back = wait_until(lambda: answers(up.slot_url["blue"]) == "v1.0.0", 60)
        cleared = canary_process(state, "status").stdout.splitlines()[0]
        after = takeover(LocalTarget(state))
        load._stop.set()
    print(
        f"\nblue down: status said so after {said}s: {first!r}; takeover() = {found}; blue back {back}s after its "
        f"model was; then: {cleared!r}, takeover() = {after}; failed {len(failed(load.answers))} of "
        f"{len(load.answers)}: {dict(tally(load.answers))}"
    )
    assert said is not None and first.startswith("BLUE IS DOWN: green v1.1.0") and "90% share" in first
    assert found == {"blue_version": "v1.0.0", "green_version": "v1.1.0", "blue_share": 90}
    assert back is not None and cleared.startswith("split:") and after is None
    assert not failed(load.answers), Counter(a.error[:80] for a in failed(load.answers))


def test_deploy_and_finalize_work_under_supervision(trained, tmp_path):
    """Slots come and go: a retired green is never restarted, a deployed one is when it dies."""
    with UpStack(tmp_path) as up, Load(up.url, workers=CLIENTS, max_requests=200000, max_seconds=300) as load:
        result = canary_process(tmp_path, "deploy", "v1.0.0")
        assert result.returncode == 0, result.stderr
        time.sleep(1.5)  # a few supervisor ticks: green_a was retired, not crashed
        listed = stack_json(tmp_path)["backends"]
        assert set(listed) == {"blue", "green_b"}, listed
        psutil.Process(listed["green_b"]["pid"]).kill()
        back = wait_until(
            lambda: (
                stack_json(tmp_path)["backends"]["green_b"].get("restarts") == 1
                and answers(up.slot_url["green_b"]) == "v1.0.0"
            ),
            60,
        )
        for args in (("promote",), ("finalize",)):
            result = canary_process(tmp_path, *args)
            assert result.returncode == 0, result.stderr
        time.sleep(1.5)
        listed = stack_json(tmp_path)["backends"]
        load._stop.set()
    events = [(e["event"], e.get("component")) for e in history(tmp_path)]
    print(
        f"\ndeploy, kill of the deployed green (back in {back}s), promote, finalize: slots now {sorted(listed)}; "
        f"events {events}; failed {len(failed(load.answers))} of {len(load.answers)}"
    )
    assert back is not None and set(listed) == {"blue"}, listed
    assert [c for e, c in events if e in ("exit", "restart")] == ["green_b", "green_b"], events
    assert not failed(load.answers), Counter(a.error[:80] for a in failed(load.answers))


@pytest.mark.parametrize("on_blue_down", ["wait", "pause"])
def test_a_rollout_holds_while_blue_is_down_and_resumes_or_pauses_as_the_spec_says(
    trained, bentoml_home, tmp_path, on_blue_down
):
    """Green's figures alone never advance a step: while blue is down (green answering its share) the rollout
    judges nothing; with `on_blue_down: wait` it carries on once blue is back, with `pause` it stops where it is."""
    import subprocess
    import sys

    from canary_kit.steer.control import split_of
    from conftest import ROOT

    home = private_store(bentoml_home, tmp_path)
    state = tmp_path / "state"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"on_blue_down: {on_blue_down}\nblue_down_seconds: 120\n")
    settings = dict(
        CANARY_BENTOML_HOME=str(home),
        CANARY_RESTART_DELAY="0.5",
        CANARY_RESTART_DELAY_MAX="1",
        CANARY_RESTART_LIMIT="100",
    )
    model = home / "models" / "penguin_classifier" / "v1.0.0"
    argv = [
        sys.executable,
        "-m",
        "canary_kit",
        "rollout",
        "--spec",
        str(spec),
        "--hold",
        "3",
        "--min-step-seconds",
        "2",
        "--min-requests",
        "5",
        "--min-rows",
        "20",
        "--max-p99-ms",
        "10000",
        "--max-p99-ratio",
        "50",
        "--dry-run",
        "max_slower_share",
        "--state-dir",
        str(state),
    ]
    with UpStack(state, **settings) as up, Load(up.url, workers=8, max_requests=200000, max_seconds=240) as load:
        load.wait_for(0, 100)
        rolling = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            reached = wait_until(lambda: split_of(LocalTarget(state))[0] >= 25, 60, 0.1)
            shutil.move(model, tmp_path / "v1.0.0")  # blue cannot start again until its model is back
            psutil.Process(stack_json(state)["backends"]["blue"]["pid"]).kill()
            said = wait_until(lambda: canary_process(state, "status").stdout.startswith("BLUE IS DOWN"), 30, 0.5)
            held_at = split_of(LocalTarget(state))[0]
            time.sleep(6)  # two windows' worth: nothing may advance meanwhile
            still = split_of(LocalTarget(state))[0]
            shutil.move(tmp_path / "v1.0.0", model)
            back = wait_until(lambda: answers(up.slot_url["blue"]) == "v1.0.0", 60)
            output, _ = rolling.communicate(timeout=240)
        finally:
            if rolling.poll() is None:
                rolling.kill()
        final = split_of(LocalTarget(state))[0]
        load._stop.set()
    print(
        f"\non_blue_down {on_blue_down}: weight reached 25 after {reached}s, blue down said after {said}s, weight "
        f"{held_at}% then {still}% 6 s later, blue back {back}s after its model; rollout exit {rolling.returncode}, "
        f"green at {final}%\n{output}\nfailed {len(failed(load.answers))} of {len(load.answers)}"
    )
    assert reached is not None and said is not None and back is not None
    assert still == held_at, "a step advanced while blue was down"
    assert "BLUE DOWN - blue is down" in output, output
    if on_blue_down == "wait":
        assert rolling.returncode == 0 and "promoted" in output and final == 100, output
    else:
        assert rolling.returncode == 2 and "paused" in output.splitlines()[-1] and final == held_at, output
    assert not failed(load.answers), Counter(a.error[:80] for a in failed(load.answers))
