"""Every release, not one: the whole loop from the first canary to the next version and the one after, on a real
stack, under keep-alive clients that never resend; refused deploys; history, status and figures across swaps."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from canary_kit.core import routing
from canary_kit.core.config import SLOTS
from canary_kit.core.processes import alive, listeners
from canary_kit.stacks.backends import read_stack_file
from canary_kit.stacks.nginx import OPERATOR_URL, operator_transport
from conftest import EXAMPLE_ROW, ROOT, canary_process, nginx_pids, run, running_stack
from load import Load, tally

pytestmark = pytest.mark.integration
# Short holds and loose latency gates: this tests the mechanism on a shared 2-core machine, not the speed.
# (max_slower_share, the sequential latency comparison: reported only, as where a process runs moves its latency here)
FAST = ["--hold", "3", "--min-requests", "5", "--min-rows", "20", "--max-p99-ms", "10000", "--max-p99-ratio", "50"]
FAST += ["--dry-run", "max_slower_share", "--min-step-seconds", "2"]
FAILING = [*FAST[:4], "--max-p99-ms", "0.001", "--max-failed-checks", "2"]  # no version answers that fast
NEXT = "v1.2.0"
TRAIN_NEXT = [sys.executable, "train_model.py", "--version", NEXT, "--algorithm", "random_forest", "--no-export"]


@pytest.fixture(scope="module")
def release_stack(trained, tmp_path_factory):
    """One stack for this module's releases, one after the other."""
    with running_stack(tmp_path_factory.mktemp("release")) as running:
        yield running


def step(state_dir, *args: str, expect_exit: int = 0) -> subprocess.CompletedProcess:
    result = canary_process(state_dir, *args)
    assert result.returncode == expect_exit, f"canary {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def versions_after(load: Load, count: int = 150) -> Counter:
    """Which versions answered the `count` requests sent after this moment."""
    return tally(load.wait_for(time.monotonic(), count, timeout=120))


def test_a_whole_release_loop_fails_no_request_and_each_step_serves_exactly_its_versions(release_stack):
    """v1.0.0/v1.1.0 -> rollout -> finalize -> train v1.2.0 -> deploy -> rollout with a failing gate -> automatic
    rollback -> deploy again -> promote -> finalize, under 16 keep-alive clients that never resend."""
    settings, state_dir = release_stack.settings, release_stack.settings.state_dir
    pids_before, seen = nginx_pids(release_stack), []
    # paced at 800 requests/s: 16 clients keep every step busy, and leave the stack some of the 2 cores
    with Load(settings.url, workers=16, max_requests=400_000, max_seconds=900, rate=800) as load:
        load.wait_for(0, 100)
        step(state_dir, "rollout", *FAST)
        seen.append(("rollout (promoted)", versions_after(load), {"v1.1.0"}))
        step(state_dir, "finalize", "-m", "v1.1.0 is the new stable")
        seen.append(("finalize", versions_after(load), {"v1.1.0"}))
        run([*TRAIN_NEXT])
        step(state_dir, "deploy", NEXT)
        seen.append(("deploy v1.2.0", versions_after(load), {"v1.1.0"}))
        failing = step(state_dir, "rollout", *FAILING, expect_exit=1)
        assert "rolled back" in failing.stdout, failing.stdout
        seen.append(("rollout failing its gate", versions_after(load), {"v1.1.0"}))
        step(state_dir, "deploy", NEXT, "-m", "again")
        seen.append(("deploy again", versions_after(load), {"v1.1.0"}))
        step(state_dir, "promote")
        seen.append(("promote", versions_after(load), {NEXT}))
        step(state_dir, "finalize")
        seen.append(("finalize", versions_after(load), {NEXT}))
    everything, pids_after = tally(load.answers), nginx_pids(release_stack)
    print(f"\n{len(load.answers)} requests from 16 clients: {dict(everything)}")
    for name, counts, _ in seen:
        print(f"  after {name:<26} {dict(counts)}")
    print(f"nginx master and workers before {pids_before}, after {pids_after}")
    assert not load.failed(), everything
    for name, counts, expected in seen:
        assert set(counts) == expected and sum(counts.values()) == 150, (name, counts)
    assert pids_after == pids_before, "nginx was reloaded or restarted"
    state = routing.read(state_dir / routing.STATE_FILE)
    assert (state.blue_version, state.green_version, state.green_weight) == (NEXT, None, 0)
    assert list(read_stack_file(state_dir)["backends"]) == ["blue"]  # green's processes were stopped

    history = [json.loads(line) for line in canary_process(state_dir, "history", "--json").stdout.splitlines()]
    events = [(e["event"], e["blue_version"], e["green_version"]) for e in history]
    print("history: " + ", ".join(f"{e}({b}/{g})" for e, b, g in events))
    finals = [e for e in events if e[0] in ("deploy", "finalize")]
    assert finals[-1] == ("finalize", NEXT, None) and ("finalize", "v1.1.0", None) in finals
    table = canary_process(state_dir, "history").stdout
    assert "rollout" in table and "v1.2.0" in table and "deploy" in table, table


def broken_version(version: str) -> None:
    """A version whose model files are garbage: the service cannot load it and never becomes ready."""
    import bentoml

    good = bentoml.models.get("penguin_classifier:v1.0.0")
    with bentoml.models.create(
        f"penguin_classifier:{version}", labels=good.info.labels, metadata=good.info.metadata
    ) as model:
        for path in Path(good.path).iterdir():
            if path.is_file() and path.name != "model.yaml":
                Path(model.path_of(path.name)).write_bytes(b"not a model")


@pytest.mark.parametrize("case", ["missing from the store", "crashes at start"])
def test_a_deploy_that_cannot_serve_is_refused_and_blue_keeps_serving(release_stack, case):
    """A version missing from the store is refused before anything changes; one that crashes at start is
    stopped after green went to 0%, and the old green stays in its slot. Blue serves 100% either way."""
    settings, state_dir = release_stack.settings, release_stack.settings.state_dir
    state_file = state_dir / routing.STATE_FILE
    if routing.read(state_file).green_version is None:
        assert canary_process(state_dir, "deploy", "v1.1.0").returncode == 0
    weight = 0 if case == "missing from the store" else 10
    assert canary_process(state_dir, "set-weight", str(weight)).returncode == 0
    version = "v9.9.9" if case == "missing from the store" else "v9.9.8"
    if case == "crashes at start":
        broken_version(version)
    before, state_bytes = routing.read(state_file), state_file.read_bytes()
    listed_before = read_stack_file(state_dir)["backends"]
    try:
        # paced: the refused deploy waits ~25 s for the crashing worker; unpaced, 50,000 requests ran out before it
        with Load(settings.url, workers=8, max_requests=200_000, max_seconds=300, rate=400) as load:
            load.wait_for(0, 50)
            result = canary_process(state_dir, "deploy", version)
            after = versions_after(load, 100)
    finally:
        if case == "crashes at start":
            import bentoml

            bentoml.models.delete(f"penguin_classifier:{version}")
    state, listed = routing.read(state_file), read_stack_file(state_dir)["backends"]
    print(
        f"\ndeploy {version} ({case}), green at {weight}% before: exit {result.returncode}: "
        f"{result.stderr.strip()[-200:]}\n{len(load.answers)} requests: {dict(tally(load.answers))}; "
        f"the 100 sent after it returned: {dict(after)}"
    )
    assert result.returncode == 1 and result.stderr.startswith("error: ") and version in result.stderr
    assert not load.failed() and set(after) == {before.blue_version}
    assert (state.green_weight, state.green_version, state.green_slot) == (0, before.green_version, before.green_slot)
    assert listed == listed_before and all(alive(entry["pid"]) for entry in listed.values())  # the old green too
    if case == "missing from the store":
        assert state_file.read_bytes() == state_bytes


def test_figures_stay_true_across_a_deploy_and_status_watch_refreshes_in_place(release_stack):
    """After a deploy, each backend's figures count exactly what it served since; `status --watch` keeps going."""
    settings, state_dir = release_stack.settings, release_stack.settings.state_dir
    assert canary_process(state_dir, "deploy", "v1.0.0", "-m", "figures").returncode == 0  # a fresh green
    body = {"instances": [EXAMPLE_ROW]}
    with httpx.Client(transport=operator_transport(settings)) as client:  # the operator's pins: any version
        for pin, count in (("always", 40), ("never", 25)):
            for _ in range(count):
                assert client.post(f"{OPERATOR_URL}/predict", json=body, headers={"X-Canary": pin}).status_code == 200
    report = json.loads(canary_process(state_dir, "status", "--json").stdout)
    figures = {color: b["since_change"]["requests"] for color, b in report["backends"].items()}
    print(f"\n40 predictions pinned to green and 25 to blue since the deploy; /metrics counted {figures}")
    assert figures == {"green": 40, "blue": 25}
    blue = routing.read(state_dir / routing.STATE_FILE).blue_version
    assert report["backends"]["green"]["version"] == "v1.0.0" and report["backends"]["blue"]["version"] == blue

    argv = [
        sys.executable,
        "-m",
        "canary_kit",
        "status",
        "--watch",
        "--interval",
        "0.5",
        "--state-dir",
        str(state_dir),
    ]
    watch = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(4)
        watch.send_signal(signal.SIGINT)
        out, _ = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
    print(f"status --watch printed its table {out.count('split:')} times in 4 s")
    assert out.count("split:") >= 3 and watch.returncode == 0, out


def test_finalize_is_refused_while_green_does_not_answer(own_stack):
    """After a promote, green dies: nginx quietly serves everyone from blue, and finalize must not stop blue."""
    state_dir = own_stack.settings.state_dir
    assert canary_process(state_dir, "promote").returncode == 0
    green = next(c for c in own_stack.children if c.name == "green_a")
    green.kill()
    with Load(own_stack.settings.url, workers=4, max_requests=200_000, max_seconds=120) as load:
        load.wait_for(0, 50)
        result = canary_process(state_dir, "finalize")
        after = versions_after(load, 100)
    print(
        f"\nfinalize with green dead: exit {result.returncode}: {result.stderr.strip()}\nanswers after: {dict(after)}"
    )
    assert result.returncode == 1 and "green does not answer" in result.stderr
    assert not load.failed() and set(after) == {"v1.0.0"}
    assert routing.read(state_dir / routing.STATE_FILE).blue_version == "v1.0.0"


def test_an_interrupted_deploy_leaves_nothing_running_and_stopping_the_stack_stops_what_deploy_started(own_stack):
    settings, state_dir = own_stack.settings, own_stack.settings.state_dir
    argv = [sys.executable, "-m", "canary_kit", "deploy", "v1.0.0", "--state-dir", str(state_dir)]
    deploying = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while "green_b" not in read_stack_file(state_dir).get("backends", {}) and time.monotonic() < deadline:
        time.sleep(0.05)  # until the new version's process is listed: it is starting
    deploying.send_signal(signal.SIGTERM)
    out, _ = deploying.communicate(timeout=60)
    listed = read_stack_file(state_dir)["backends"]
    print(
        f"\ndeploy interrupted while starting: exit {deploying.returncode}, {out.strip()[-200:]}; "
        f"listed: {list(listed)}"
    )
    assert deploying.returncode != 0 and "green_b" not in listed and not listeners(settings.green_port_b)
    assert routing.read(state_dir / routing.STATE_FILE).green_version == "v1.1.0"

    assert canary_process(state_dir, "deploy", "v1.0.0").returncode == 0  # green_b now, started by `canary deploy`
    started = [entry["pid"] for entry in read_stack_file(state_dir)["backends"].values()]
    own_stack.stop()
    left = [pid for pid in started if alive(pid)] + [p.pid for s in SLOTS for p in listeners(settings.slot_port(s))]
    assert not left, f"still running after the stack stopped: {left}"


def test_commands_that_need_a_green_version_refuse_in_one_line_while_green_is_free(own_stack):
    state_dir = own_stack.settings.state_dir
    assert canary_process(state_dir, "promote").returncode == 0
    assert canary_process(state_dir, "finalize").returncode == 0  # v1.1.0 is blue now, green is free
    state_file = state_dir / routing.STATE_FILE
    before = state_file.read_bytes()
    for args in (["set-weight", "10"], ["promote"], ["rollout"], ["shadow", "--seconds", "1"], ["finalize"]):
        result = canary_process(state_dir, *args)
        print(f"canary {' '.join(args)}: exit {result.returncode}: {result.stdout!r} {result.stderr.strip()!r}")
        assert result.returncode == 1 and not result.stdout and result.stderr.count("\n") == 1, args
        assert "serves no version" in result.stderr and "deploy VERSION" in result.stderr, result.stderr
    assert state_file.read_bytes() == before
