"""A rollout never ends half-way unsaid, and a change is made with its history or not at all (#27): a rollout killed
with SIGKILL, an error right after a weight change, a ledger whose write lock is held for 40 s, and a full disk
during `set-weight`. Each time green ends at 0% (or paused and shouted about), a history line says why, and no
command prints a traceback."""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest

from canary_kit.core import routing
from canary_kit.observe import ledger
from canary_kit.rollout import live
from canary_kit.stacks import nginx
from canary_kit.stacks.targets import LocalTarget
from canary_kit.steer.control import set_weight
from conftest import ROOT, canary_process, running_stack, traversable
from test_supervise import UpStack, history, wait_until

pytestmark = pytest.mark.integration


def rollout_argv(state_dir, *options: str) -> list[str]:
    return [sys.executable, "-m", "canary_kit", "rollout", *options, "--state-dir", str(state_dir)]


def weight(state_dir) -> int:
    return routing.current(state_dir / routing.STATE_FILE).green_weight


def no_traceback(*outputs: str) -> None:
    for output in outputs:
        assert "Traceback" not in output, output


def test_a_rollout_killed_with_sigkill_is_put_back_to_0_by_the_supervisor_and_shouted(trained, tmp_path):
    state = tmp_path / "state"
    with UpStack(state) as up:
        argv = rollout_argv(state, "--steps", "30,60,100", "--hold", "60", "--min-requests", "1000")
        rolling = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            reached = wait_until(lambda: weight(state) == 30, 60, 0.1)
            assert reached is not None, "the rollout never set green to 30%"
            time.sleep(1)
            rolling.send_signal(signal.SIGKILL)
            rolling.wait(timeout=10)
        finally:
            if rolling.poll() is None:
                rolling.kill()
                rolling.wait()
        back = wait_until(lambda: weight(state) == 0, 10, 0.1)
        last = history(state)[-1]
        status = canary_process(state, "status")
        seen = {httpx.get(f"{up.url}/health", timeout=5).headers["x-canary-route"] for _ in range(100)}
        print(
            f"\ngreen at 30% when the rollout was killed; back to 0% after {back} s; history: {last['event']}: "
            f"{last['reason']}\nstatus says: {status.stderr.strip()}\n100 requests answered by {seen}"
        )
        assert back is not None and seen == {"blue"}
        assert last["event"] == "rollout" and "killed" in last["reason"] and last["new_green_weight"] == 0
        assert "ROLLOUT FAILED" in status.stderr and "killed" in status.stderr
        assert live.read(state)["state"] == "rolled back"
        no_traceback(status.stdout, status.stderr)


def test_an_error_right_after_a_weight_change_puts_green_back_to_0(own_stack):
    """nginx's admin server goes away (its socket removed): the step's change is written, nginx applies it, but its
    confirmation never comes; the rollout ends with green at 0%, saying why."""
    s = own_stack.settings
    set_weight(LocalTarget(s.state_dir), 0)
    nginx.admin_socket(s).unlink()
    argv = rollout_argv(s.state_dir, "--steps", "30,100", "--hold", "5")
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    entries = history(s.state_dir)
    seen = {httpx.get(f"{s.url}/health", timeout=5).headers["x-canary-route"] for _ in range(100)}
    status = canary_process(s.state_dir, "status")
    print(
        f"\nrollout exit {done.returncode}: {done.stdout.strip().splitlines()[-1]}\nhistory: "
        + "; ".join(f"{e['event']} {e['old_green_weight']}->{e['new_green_weight']}: {e['reason']}" for e in entries)
        + f"\n100 requests answered by {seen}; status says: {status.stderr.strip()}"
    )
    assert done.returncode == 1 and weight(s.state_dir) == 0 and seen == {"blue"}
    steps = [e for e in entries if e["event"] == "rollout"]
    assert [e["new_green_weight"] for e in steps] == [30, 0]
    assert "error" in steps[-1]["reason"] and "did not apply" in steps[-1]["reason"]
    assert "ROLLOUT FAILED" in status.stderr
    no_traceback(done.stdout, done.stderr, status.stdout, status.stderr)


def test_a_ledger_locked_for_40_s_never_shows_a_traceback_and_the_rollout_ends_at_0(own_stack):
    """Another process holds the ledger's write lock (up to 40 s: longer than any command waits): `status` still
    answers at once, `quality` says in one line that the ledger is busy, and the rollout (its accuracy gate needs
    the ledger) ends with green at 0%."""
    s = own_stack.settings
    set_weight(LocalTarget(s.state_dir), 0)
    with ledger.connect(s.state_dir):
        pass
    holder = sqlite3.connect(s.state_dir / ledger.LEDGER, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    held_at = time.monotonic()
    release = threading.Timer(40, lambda: holder.execute("ROLLBACK"))
    release.start()
    try:
        argv = rollout_argv(
            s.state_dir, "--steps", "30,100", "--hold", "3", "--max-accuracy-drop", "0.2", "--min-labels", "1"
        )
        rolling = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        began = time.monotonic()
        status = canary_process(s.state_dir, "status")
        status_took = time.monotonic() - began
        began = time.monotonic()
        quality = canary_process(s.state_dir, "quality")
        quality_took = time.monotonic() - began
        out, err = rolling.communicate(timeout=120)
        ended_after = time.monotonic() - held_at
    finally:
        release.cancel()  # the rollout has ended (it waits 30 s for the lock) or the test failed: let go now
        release.join(timeout=60)
        holder.close()  # closing rolls back the open transaction, if the timer did not
    last = history(s.state_dir)[-1]
    print(
        f"\nstatus: exit {status.returncode} in {status_took:.1f}s; quality: exit {quality.returncode} in "
        f"{quality_took:.1f}s: {quality.stderr.strip()}\nrollout ended {ended_after:.0f}s into the lock, exit "
        f"{rolling.returncode}: {out.strip().splitlines()[-1]}\nhistory: {last['event']}: {last['reason']}"
    )
    assert status.returncode == 0 and status_took < 15
    assert quality.returncode == 1 and len(quality.stderr.strip().splitlines()) == 1 and "busy" in quality.stderr
    assert rolling.returncode == 1 and weight(s.state_dir) == 0
    assert last["event"] == "rollout" and last["new_green_weight"] == 0 and "busy" in last["reason"]
    no_traceback(status.stdout, status.stderr, quality.stdout, quality.stderr, out, err)


def consistent(state_dir) -> tuple[bytes, bytes, int]:
    """The routing state's and the history's bytes, and the serial of the history's last line (it must be the
    state's)."""
    state, log = (state_dir / routing.STATE_FILE).read_bytes(), (state_dir / routing.CHANGELOG).read_bytes()
    assert json.loads(log.splitlines()[-1])["serial"] == json.loads(state)["serial"]
    return state, log, json.loads(state)["serial"]


def test_a_full_disk_during_set_weight_is_one_line_and_no_change(trained, tmp_path):
    """The state folder is a 64 MiB tmpfs, filled up; then the history cannot grow while the state could (a file
    size limit, RLIMIT_FSIZE, on the command): each time one line, the state and its history unchanged."""
    state_dir = traversable(tmp_path) / "state"
    state_dir.mkdir(mode=0o700)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(state_dir)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with running_stack(state_dir) as stack:
            s = stack.settings
            assert canary_process(state_dir, "set-weight", "20", "-m", "before").returncode == 0
            before = consistent(state_dir)
            filler = state_dir / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
            free = os.statvfs(state_dir).f_bavail
            full = canary_process(state_dir, "set-weight", "40", "-m", "on a full disk")
            applied = json.loads(canary_process(state_dir, "status", "--json").stdout)["nginx"]["green_weight"]
            after_full = consistent(state_dir)
            filler.unlink()
            for n in range(4):  # a history past 4 KiB
                assert canary_process(state_dir, "set-weight", str(20 + n % 2), "-m", "x" * 1000).returncode == 0
            before_limit = consistent(state_dir)
            size = (state_dir / routing.CHANGELOG).stat().st_size
            limit = subprocess.run(
                [sys.executable, "-m", "canary_kit", "set-weight", "40", "--state-dir", str(state_dir)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size)),
            )
            after_limit = consistent(state_dir)
            fine = canary_process(state_dir, "set-weight", "40", "-m", "with room again")
            after = consistent(state_dir)
            seen = [httpx.get(f"{s.url}/health", timeout=5).headers["x-canary-route"] for _ in range(200)]
        print(
            f"\nfull ({free} blocks free): exit {full.returncode}: {full.stderr.strip()}; nginx applies "
            f"{applied}%\nhistory limited to {size} bytes: exit {limit.returncode}: {limit.stderr.strip()}\n"
            f"with room again: {fine.stdout.strip()}; serials {before[2]}, {after_full[2]}, {before_limit[2]}, "
            f"{after_limit[2]}, {after[2]}; green answered {seen.count('green')} of 200"
        )
        for result in (full, limit):
            assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert "nothing changed" in result.stderr
            no_traceback(result.stdout, result.stderr)
        assert after_full == before and after_limit == before_limit and applied == 20
        assert fine.returncode == 0 and after[2] == before_limit[2] + 1 and 40 <= seen.count("green") <= 120
    finally:
        subprocess.run(["umount", "-l", str(state_dir)])
