"""A running `canary rollout` seen and steered from the dashboard, in Debian's headless Chromium, on real stacks
under keep-alive clients sending the data's rows: its step and every gate's figure against its threshold on the
page; pause and abort from the page (the rollout says so and exits 2 / rolls back and exits 1); screenshots of
the weak v1.9.0 mid-rollout and after its automatic rollback (committed under docs/ with UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from canary_kit.stacks.targets import LocalTarget
from canary_kit.steer.control import split_of
from conftest import NEXT, ROOT, WEAK, canary_process, data_rows, running_stack
from dashboard_support import TOKEN, chromium, dashboard, text, wait_until
from load import Load, tally

pytestmark = pytest.mark.integration
# loose: a shared 2-core machine; fixed mode: these tests hold windows (and screenshot the fixed gates' grid)
HTTP = ["--mode", "fixed", "--min-requests", "20", "--max-p99-ms", "10000", "--max-p99-ratio", "50"]
DOCS = ROOT / "docs"


def rollout(state_dir: Path, *args: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "canary_kit", "rollout", *HTTP, *args, "--state-dir", str(state_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line as it is printed: the test times them
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finished(proc: subprocess.Popen, timeout: float = 240, since: float | None = None) -> tuple[int, str]:
    """Its exit code and output, each line stamped with the seconds from `since` (default: this call)."""
    started, lines = since or time.monotonic(), []
    for line in proc.stdout:
        lines.append(f"[{time.monotonic() - started:5.1f}s] {line}")
    proc.wait(timeout=timeout)
    return proc.returncode, "".join(lines)


def unstamped(output: str) -> list[str]:
    return [line.split("] ", 1)[-1] for line in output.strip().splitlines()]


def stamp(output: str, words: str) -> float:
    """When the line with `words` was printed (seconds from `finished`)."""
    return next(float(line[1:].split("s]")[0]) for line in output.splitlines() if words in line)


def rows_load(settings, **kwargs) -> Load:
    return Load(settings.url, workers=kwargs.pop("workers", 8), max_requests=200_000, max_seconds=300, rows=data_rows())


def screenshot(driver, name: str, tmp_path: Path) -> Path:
    """Into the test's folder, and into docs/ when UPDATE_SCREENSHOTS=1 (as committed for the README)."""
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copy(shot, DOCS / name)
    return shot


@pytest.fixture(scope="module")
def next_green(more_versions, tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("dash-next"), green_version=NEXT, green_weight=10) as stack:
        yield stack


@pytest.mark.parametrize("action", ["pause", "abort"])
def test_pause_and_abort_a_running_rollout_from_the_page(next_green, action):
    settings = next_green.settings
    state_dir = settings.state_dir
    assert canary_process(state_dir, "set-weight", "10", "-m", "test: start").returncode == 0
    with rows_load(settings) as load, dashboard(state_dir) as dash, chromium() as driver:
        load.wait_for(0, 50)
        driver.get(f"{dash.url}/#token={TOKEN}")
        proc = rollout(state_dir, "--hold", "60", "--steps", "10,50,100")
        try:
            wait_until(lambda: text(driver, "rollout-state").startswith("running: step 1/3"), 30, what="running")
            wait_until(lambda: driver.find_element(By.ID, action).is_enabled(), 5, what=f"{action} enabled")
            driver.find_element(By.ID, "reason").send_keys(f"test: {action} from the page")
            clicked = time.monotonic()
            driver.find_element(By.ID, action).click()
            code, output = finished(proc, timeout=60, since=clicked)
            took = time.monotonic() - clicked
        finally:
            if proc.poll() is None:
                proc.kill()
        state = "paused" if action == "pause" else "rolled back"
        wait_until(lambda: text(driver, "rollout-state").startswith(state), 5, what=f"the page shows {state}")
        shown = text(driver, "message")
    acted = stamp(output, "asked from outside")
    print(
        f"\n{action} from the page: the rollout acted {acted:.1f} s after the click and ended {took:.2f} s after "
        f"it (exit {code}); "
        f"the page said: {shown}\n{output}"
    )
    assert f"{action} asked from outside" in output, output
    assert "by the dashboard (" in output and f"(test: {action} from the page)" in output
    last = unstamped(output)[-1]
    if action == "pause":
        assert code == 2 and last.startswith("paused: at 10%: pause asked from outside"), output
        assert split_of(LocalTarget(state_dir))[0] == 10
    else:
        assert code == 1 and last.startswith("rolled back: aborted at 10%: abort asked from outside"), output
        assert split_of(LocalTarget(state_dir))[0] == 0
    assert shown.startswith(f"rollout {state}:"), shown
    assert acted < 2.5, "read once per health-check tick (1 s)"
    assert not load.failed(), tally(load.answers)


def test_screenshots_of_the_weak_model_mid_rollout_and_after_its_automatic_rollback(more_versions, tmp_path):
    with running_stack(tmp_path / "state", green_version=WEAK, green_weight=10) as stack:
        settings = stack.settings
        state_dir = settings.state_dir
        with rows_load(settings, workers=12) as load, dashboard(state_dir) as dash, chromium("1440,1500") as driver:
            load.wait_for(0, 50)
            driver.get(f"{dash.url}/#token={TOKEN}")
            # some minutes of history on the charts before the rollout (here: seconds), and a failed check on the page
            # for one hold (8 s) before the rollback: longer for docs/' screenshots
            docs = os.environ.get("UPDATE_SCREENSHOTS") == "1"
            time.sleep(20 if docs else 6)
            failed = "3" if docs else "2"
            proc = rollout(state_dir, "--hold", "8", "--max-failed-checks", failed, "--steps", "10,25,50,100")
            try:
                wait_until(
                    lambda: (
                        "fail, verdict hold - class divergence" in text(driver, "rollout-check")
                        and text(driver, "rollout-state").startswith("running")
                    ),
                    90,
                    what="a failed check, running",
                )
                time.sleep(1.5)  # the gate grid drawn
                mid = screenshot(driver, "dashboard-rollout.png", tmp_path)
                gates_mid = text(driver, "gates")
                code, output = finished(proc)
            finally:
                if proc.poll() is None:
                    proc.kill()
            wait_until(
                lambda: (
                    text(driver, "rollout-state").startswith("rolled back") and text(driver, "green-weight") == "0%"
                ),
                10,
                what="the rollback on the page",
            )
            time.sleep(4)  # a few seconds at 0% on the charts
            after = screenshot(driver, "dashboard-rolled-back.png", tmp_path)
            final = text(driver, "rollout-state")
    print(f"\n{output}\nmid-rollout gates: {gates_mid}\nafter: {final}\nscreenshots: {mid}, {after}")
    assert code == 1 and "rolled back" in output and "class divergence" in unstamped(output)[-1], output
    assert "max_class_divergence" in gates_mid
    assert final.startswith("rolled back:") and "class divergence" in final
    assert not load.failed(), tally(load.answers)
