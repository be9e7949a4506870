"""What the dashboard tests share: `canary dashboard` as its own process, and Debian's headless Chromium driven by
Selenium through Debian's chromedriver (no browser or driver download)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, free_port

TOKEN = "dashboard-test-token-0123456789"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1350",
]


@dataclass
class Dashboard:
    url: str
    proc: subprocess.Popen
    started: float  # time.monotonic() when the process was started
    ready: float  # ... and when it first answered

    def post(self, action: str, body: dict | None = None, token: str | None = TOKEN, **headers) -> httpx.Response:
        if token is not None:
            headers["X-Canary-Token"] = token
        return httpx.post(f"{self.url}/api/{action}", json=body or {}, headers=headers, timeout=30, trust_env=False)

    def state(self, token: str | None = None) -> dict:
        headers = {"X-Canary-Token": token} if token else {}
        return httpx.get(f"{self.url}/api/state", headers=headers, timeout=10, trust_env=False).json()


@contextmanager
def dashboard(state_dir: Path, *args: str, token: str = TOKEN, host: str = "127.0.0.1"):
    """`canary dashboard` for the stack in `state_dir`, on a free port, stopped whatever happens."""
    port = free_port()
    env = {**os.environ, "CANARY_DASHBOARD_TOKEN": token}
    argv = [
        sys.executable,
        "-m",
        "canary_kit",
        "dashboard",
        "--port",
        str(port),
        "--host",
        host,
        "--state-dir",
        str(state_dir),
        *args,
    ]
    log = tempfile.NamedTemporaryFile("w+", prefix="dashboard-", suffix=".log", delete=False)
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, Path(log.name).read_text()
            assert time.monotonic() < deadline, "the dashboard did not answer within 60 s"
            time.sleep(0.05)
        yield Dashboard(url, proc, started, time.monotonic())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"\n--- canary dashboard said:\n{Path(log.name).read_text()}")
        Path(log.name).unlink(missing_ok=True)


@contextmanager
def chromium(window: str = "1440,1350"):
    """Debian's headless Chromium through Selenium and chromedriver, a fresh profile each time."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag if not flag.startswith("--window-size") else f"--window-size={window}")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).get_attribute("textContent")


def wait_until(condition, timeout: float, step: float = 0.05, what: str = "") -> float:
    """Poll `condition` until it is true; returns the seconds it took (fails after `timeout`)."""
    started = time.monotonic()
    last = None
    while time.monotonic() - started < timeout:
        try:
            if condition():
                return time.monotonic() - started
        except Exception as exc:  # noqa: BLE001 - e.g. an element not drawn yet
            last = exc
        time.sleep(step)
    raise AssertionError(f"not within {timeout} s: {what} (last error: {last!r})")


def fingerprint(state_dir: Path) -> dict[str, str]:
    """Hashes of the files an action would change: the routing state, the change log, the figures' baseline."""
    return {
        name: hashlib.sha256((state_dir / name).read_bytes()).hexdigest() if (state_dir / name).exists() else ""
        for name in ("routing.json", "changes.log", "baseline.json")
    }
