"""`canary dashboard` on a real stack (real nginx, real `bentoml serve`) under load, driven in Debian's headless
Chromium: figures within 2 s, set weight 50 from the page (checked through nginx), a rollback from the page,
refusals that change nothing, and the backends read once a second whatever the number of pages."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from contextlib import contextmanager

import httpx
import pytest
from selenium.webdriver.common.by import By

from canary_kit.dashboard.server import Poller, create_app
from canary_kit.stacks.targets import LocalTarget
from canary_kit.steer.control import split_of
from conftest import canary_process, free_port, running_stack
from dashboard_support import TOKEN, chromium, dashboard, fingerprint, text, wait_until
from load import Load, assert_split, tally

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dash_stack(trained, tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("dashboard")) as stack:
        yield stack


@pytest.fixture
def at_10(dash_stack):
    assert canary_process(dash_stack.settings.state_dir, "set-weight", "10", "-m", "test: start").returncode == 0
    return dash_stack


def last_change(state_dir) -> dict:
    return json.loads((state_dir / "changes.log").read_text().splitlines()[-1])


def click(driver, element_id: str) -> float:
    driver.find_element(By.ID, element_id).click()
    return time.monotonic()


def fill(driver, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def test_the_page_shows_both_versions_and_sets_the_weight_and_rolls_back(at_10):
    settings = at_10.settings
    state_dir = settings.state_dir
    with Load(settings.url, workers=4, max_requests=200_000, max_seconds=300) as load, chromium() as driver:
        load.wait_for(0, 50)
        with dashboard(state_dir) as dash:
            driver.get(f"{dash.url}/#token={TOKEN}")
            shown = wait_until(
                lambda: (
                    text(driver, "blue-version") == "v1.0.0"
                    and text(driver, "green-version") == "v1.1.0"
                    and text(driver, "blue-requests").isdigit()
                    and text(driver, "green-requests").isdigit()
                    and text(driver, "green-weight") == "10%"
                    and re.match(r"[\d.]+ / [\d.]+", text(driver, "blue-latency"))
                ),
                10,
                what="both versions",
            )
            rates = wait_until(lambda: text(driver, "blue-rps") != "-" and text(driver, "green-rps") != "-", 10)
            figures = {
                c: [text(driver, f"{c}-{k}") for k in ("weight", "health", "rps", "requests", "latency")]
                for c in ("blue", "green")
            }
            print(
                f"\ndashboard answered {dash.ready - dash.started:.2f} s after its start; the page showed both "
                f"versions' figures {shown:.2f} s after it was opened ({time.monotonic() - dash.started:.2f} s "
                f"after the start), rates {rates:.2f} s later: {figures}"
            )
            assert shown < 2.0
            assert driver.current_url.endswith("/"), "the token is taken out of the address bar"

            # a refusal is the CLI's one line, and changes nothing
            before = fingerprint(state_dir)
            fill(driver, "weight", "150")
            click(driver, "set-weight")
            wait_until(lambda: text(driver, "message").startswith("error:"), 10, what="a refusal")
            assert text(driver, "message") == "error: weight must be a whole number from 0 to 100, got 150"
            assert fingerprint(state_dir) == before

            fill(driver, "weight", "50")
            fill(driver, "reason", "test: from the page")
            clicked = click(driver, "set-weight")
            took = wait_until(lambda: text(driver, "green-weight") == "50%" and "green 50%" in text(driver, "split"), 5)
            wait_until(lambda: text(driver, "message") == "green 10% -> 50%  (blue 50%)", 5, what="the CLI's line")
            wait_until(lambda: dash.state()["status"]["green_weight"] == 50, 5)
            print(
                f"set weight 50: the page showed 50% {took:.2f} s after the click, the poller confirmed it "
                f"{time.monotonic() - clicked:.2f} s after it"
            )
            assert took < 2.0
            assert last_change(state_dir)["event"] == "set-weight"
            assert last_change(state_dir)["reason"] == "test: from the page (dashboard)"
            assert text(driver, "green-weight") == "50%", "a poll from before the change did not undo the page"
        print(f"background load: {dict(tally(load.answers))}")
        assert not load.failed()

        through = Load(settings.url, workers=8, max_requests=2000, max_seconds=240).run()
        counts = tally(through.answers)
        print(f"2000 requests through nginx after the page set 50%: {dict(counts)}")
        assert counts["v1.0.0"] + counts["v1.1.0"] == 2000, counts
        assert_split(counts["v1.1.0"], 2000, 50)

        with dashboard(state_dir) as dash:
            driver.get(f"{dash.url}/#token={TOKEN}")
            wait_until(lambda: text(driver, "green-weight") == "50%", 5, what="50% after a restart of the dashboard")
            fill(driver, "reason", "test: roll back from the page")
            click(driver, "rollback")
            took = wait_until(lambda: text(driver, "green-weight") == "0%", 5, what="the rollback")
            wait_until(lambda: "rollback" in text(driver, "history"), 5, what="the rollback in the history")
            print(f"rollback: the page showed 0% {took:.2f} s after the click")
        assert split_of(LocalTarget(state_dir))[0] == 0
        assert last_change(state_dir)["event"] == "rollback"
        after = Load(settings.url, workers=4, max_requests=300, max_seconds=120).run()
        assert tally(after.answers) == {"v1.0.0": 300}, tally(after.answers)
        violations = [e for e in driver.get_log("browser") if "Content Security Policy" in e.get("message", "")]
        assert not violations, violations


def test_actions_without_the_token_from_elsewhere_or_by_get_are_refused_and_change_nothing(at_10):
    state_dir = at_10.settings.state_dir
    with dashboard(state_dir) as dash:
        serial = dash.state()["status"]["state_file"]["serial"]
        before = fingerprint(state_dir)
        url = f"{dash.url}/api/set-weight"
        refused = {
            "no token": dash.post("set-weight", {"weight": 50}, token=None),
            "wrong token": dash.post("set-weight", {"weight": 50}, token="not-the-token-at-all"),
            "foreign Origin": dash.post("set-weight", {"weight": 50}, Origin="http://evil.example"),
            "cross-site fetch": dash.post("set-weight", {"weight": 50}, **{"Sec-Fetch-Site": "cross-site"}),
            "GET": httpx.get(f"{url}?weight=50", headers={"X-Canary-Token": TOKEN}, trust_env=False),
            "a form post": httpx.post(
                url,
                content="weight=50",
                trust_env=False,
                headers={"X-Canary-Token": TOKEN, "Content-Type": "application/x-www-form-urlencoded"},
            ),
            "another Host (DNS rebinding)": dash.post("set-weight", {"weight": 50}, Host="evil.example"),
            "a stale view": dash.post("set-weight", {"weight": 50, "serial": serial - 1}),
            "promote, stale": dash.post("promote", {"serial": serial - 1}),
            "pause, no rollout": dash.post("pause"),
        }
        lines = {name: (r.status_code, r.json()["error"]) for name, r in refused.items()}
        print("\n" + "\n".join(f"{name}: {code} {line}" for name, (code, line) in lines.items()))
        assert fingerprint(state_dir) == before, "a refused action changed the state"
        assert {name: code for name, (code, _) in lines.items()} == {
            "no token": 401,
            "wrong token": 403,
            "foreign Origin": 403,
            "cross-site fetch": 403,
            "GET": 405,
            "a form post": 415,
            "another Host (DNS rebinding)": 403,
            "a stale view": 409,
            "promote, stale": 409,
            "pause, no rollout": 409,
        }
        assert lines["a stale view"][1] == "the state was changed by someone else (green now 10%); leaving it as it is"
        assert lines["pause, no rollout"][1] == "no rollout is running"
        assert "\n" not in "".join(line for _, line in lines.values())
        reading = httpx.get(f"{dash.url}/api/state", headers={"Host": "evil.example"}, trust_env=False)
        assert reading.status_code == 403, "a rebound name reads nothing"

        page = httpx.get(f"{dash.url}/", trust_env=False)
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/static/dashboard.js" defer>']
        assert " style=" not in page.text
        allowed = dash.post("set-weight", {"weight": 10, "serial": serial, "reason": "test"}, Origin=dash.url)
        assert allowed.status_code == 200 and allowed.json()["message"] == "green already gets 10%: nothing changed"


def test_beyond_loopback_reading_needs_the_token(at_10):
    with dashboard(at_10.settings.state_dir, host="0.0.0.0") as dash:
        anonymous = httpx.get(f"{dash.url}/api/state", trust_env=False)
        wrong = httpx.get(f"{dash.url}/api/state", headers={"X-Canary-Token": "wrong-wrong-wrong"}, trust_env=False)
        assert (anonymous.status_code, wrong.status_code) == (401, 403), (anonymous.text, wrong.text)
        assert dash.state(token=TOKEN)["status"]["green_weight"] == 10


class Counting:
    """A LocalTarget that counts every read of a backend, by color and path."""

    def __init__(self, target, counts: Counter) -> None:
        self._target, self.counts = target, counts

    def __getattr__(self, name):
        return getattr(self._target, name)

    def backend(self, color: str, path: str):
        self.counts[color, path] += 1
        return self._target.backend(color, path)

    def serving(self, color: str):
        self.counts[color, "/readyz"] += 1
        return self._target.serving(color)


@contextmanager
def dashboard_in_process(state_dir, counts: Counter):
    """The dashboard's app and poller in this process (on uvicorn, as `canary dashboard` runs them), reading the
    stack through a counting target."""
    import uvicorn

    make_target = lambda: Counting(LocalTarget(state_dir), counts)  # noqa: E731
    poller = Poller(make_target, state_dir).start()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(poller, make_target, TOKEN), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 20, what="uvicorn started")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        poller.stop()


def test_one_metrics_read_per_second_per_backend_whatever_the_number_of_pages(at_10):
    """Three pages (each polling twice a second) and a script polling 10 times a second: the backends are still
    read once a second (one /metrics and one /readyz each: `canary status`'s reads), counted at every read."""
    state_dir = at_10.settings.state_dir
    counts = Counter()
    with dashboard_in_process(state_dir, counts) as url, chromium() as one, chromium() as two, chromium() as three:
        for driver in (one, two, three):
            driver.get(f"{url}/#token={TOKEN}")
        wait_until(lambda: all(text(d, "blue-version") == "v1.0.0" for d in (one, two, three)), 20, what="3 pages")
        first, started, polls = Counter(counts), time.monotonic(), 0
        while time.monotonic() - started < 10:
            assert httpx.get(f"{url}/api/state", trust_env=False).status_code == 200
            polls += 1
            time.sleep(0.1)
        reads, seconds = counts - first, time.monotonic() - started
    print(f"\nbackend reads in {seconds:.1f} s with 3 pages open and a script polling {polls} times: {dict(reads)}")
    assert set(reads) <= {(c, p) for c in ("blue", "green") for p in ("/metrics", "/readyz")}, reads
    for key, n in reads.items():
        assert n <= seconds + 1, (key, n)
    assert reads["blue", "/metrics"] >= seconds - 2, "the poller kept reading"


def test_the_page_says_when_the_stack_is_down_or_the_state_file_is_invalid(at_10, tmp_path):
    state_dir = at_10.settings.state_dir
    with dashboard(tmp_path / "nothing-here") as down, chromium() as driver:
        driver.get(f"{down.url}/#token={TOKEN}")
        wait_until(lambda: "the canary stack is not running" in text(driver, "problem"), 5, what="the banner")
        assert driver.find_element(By.ID, "problem").is_displayed()
        print(f"\nstack down: {text(driver, 'problem')}")
        fill(driver, "weight", "50")
        click(driver, "set-weight")
        wait_until(lambda: text(driver, "message").startswith("error: the canary stack is not running"), 5)
        with dashboard(state_dir) as dash:
            driver.get(f"{dash.url}/#token={TOKEN}")
            wait_until(lambda: text(driver, "green-weight") == "10%", 5, what="the stack")
            (state_dir / "routing.json").write_text("{not json")
            try:
                wait_until(lambda: "is invalid" in text(driver, "warnings"), 5, what="the invalid state file")
                print(f"invalid state file: {text(driver, 'warnings')}")
                assert text(driver, "green-weight") == "0%", "nginx sends everything to blue"
            finally:
                assert canary_process(state_dir, "set-weight", "10", "-m", "test: repair").returncode == 0
            wait_until(lambda: text(driver, "warnings") == "" and text(driver, "green-weight") == "10%", 5)
