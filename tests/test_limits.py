"""Limits before shares (#27): a client is limited by its address (requests in progress, bodies being read included,
and rate) before any version's share counts; a version's share (max_inflight) is counted by nginx once a request's
body is read whole, so slow uploads hold no version's slot; a header must arrive whole within its time, a body with
no long gap. Honest overload is still shed with a JSON 503.

The fast tests run nginx from the real templates in front of a small real backend that counts the requests it holds
at once (tests/slow.py); the last one is the issue's figure on a whole stack (real `bentoml serve`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from canary_kit.core import accesslog, routing
from canary_kit.stacks.backends import wait_ready
from canary_kit.stacks.local import Child
from canary_kit.stacks.nginx import LocalNginx
from conftest import local_settings, running_stack
from load import Load, tally
from slow import Trickle

pytestmark = pytest.mark.integration
SLOW = Path(__file__).with_name("slow.py")
CAP = 8  # max_inflight of the counted stack: requests in flight per version
DELAY = 0.3  # seconds the counting backend takes per request


@pytest.fixture
def counted(tmp_path):
    """nginx from the real templates (pins on, tight limits) in front of the counting backend on all three slots;
    blue and green both serve a version."""
    settings = local_settings(
        tmp_path,
        max_inflight=CAP,
        pins=True,
        header_timeout=3,
        body_timeout=3,
        client_connections=16,
        client_rate=20,
        client_burst=30,
    )
    ports = [settings.blue_port, settings.green_port, settings.green_port_b]
    backend = Child("backend", [sys.executable, str(SLOW), str(DELAY), *map(str, ports)], tmp_path / "backend.log")
    nginx = LocalNginx(settings)
    nginx.write()
    routing.write(
        settings.state_dir / routing.STATE_FILE,
        routing.RoutingState(green_weight=0, shadow=False, blue_version="v1.0.0", green_version="v1.1.0", serial=1),
    )
    server = Child("nginx", nginx.command(), settings.state_dir / "logs" / "nginx.log")
    try:
        backend.start()
        server.start()
        wait_ready([backend, server], {"nginx": f"{settings.url}/_nginx/ping"}, timeout=10)
        for port in ports:
            wait_ready([backend], {str(port): f"http://127.0.0.1:{port}/held"}, timeout=10)
        yield settings
    finally:
        server.stop()
        backend.stop()


def held(settings) -> dict[str, dict]:
    """color -> what the backend held (now, most at once, answered) for blue and green's first slot."""
    found = httpx.get(f"http://127.0.0.1:{settings.blue_port}/held", timeout=5).json()
    return {"blue": found[str(settings.blue_port)], "green": found[str(settings.green_port)]}


def post(url: str, headers: dict[str, str] | None = None, source: str | None = None) -> tuple[int | None, dict]:
    """One POST /predict on a connection of its own (from `source`, an address of this host): status, JSON."""
    transport = httpx.HTTPTransport(local_address=source) if source else None
    try:
        with httpx.Client(transport=transport, timeout=15) as client:
            r = client.post(f"{url}/predict", json={"instances": [{}]}, headers=headers)
            return r.status_code, {"retry-after": r.headers.get("retry-after"), "body": r.text[:200]}
    except httpx.HTTPError as exc:
        return None, {"error": repr(exc)}


def at_once(url: str, count: int, **kwargs) -> list[tuple[int | None, dict]]:
    """`count` requests sent at the same moment, each on a connection of its own."""
    answers: list = [None] * count
    start = threading.Barrier(count)

    def one(i: int) -> None:
        start.wait()
        answers[i] = post(url, **kwargs)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return answers


def test_a_versions_cap_holds_and_the_excess_is_shed_never_sent_to_the_other(counted):
    """40 requests at once for blue (green at 0%): the backend holds at most CAP of them; the rest get a fast JSON
    503 with Retry-After, and none goes to green instead."""
    answers = at_once(counted.url, 40)
    statuses = Counter(status for status, _ in answers)
    shed = [extra for status, extra in answers if status == 503]
    seen = held(counted)
    print(f"\n40 at once, cap {CAP}: {dict(statuses)}; backend held {seen}")
    assert set(statuses) <= {200, 503} and statuses[200] >= CAP, statuses
    assert seen["blue"]["most"] <= CAP and seen["blue"]["most"] == CAP, seen
    assert seen["green"]["answered"] == 0, "a request shed from blue was sent to green"
    assert shed and all(e["retry-after"] == "1" and "overloaded" in e["body"] for e in shed), shed[:3]


def test_slow_uploads_hold_no_versions_slot_and_stall_out_on_the_body_timeout(counted):
    """64 connections trickle bodies (one byte a second for 6 s, half pinned to each color) from this host while a
    fresh client sends 200 requests: every one 200; the backend never held more than the fresh client's requests;
    once the bodies stall, nginx cuts each within body_timeout (3 s) of its last byte."""
    put_weight(counted, 50)
    half = 32
    with (
        Trickle(counted.url, half, every=1.0, until=6.0, headers={"X-Canary": "always"}) as green_pinned,
        Trickle(counted.url, half, every=1.0, until=6.0, headers={"X-Canary": "never"}) as blue_pinned,
    ):
        fresh = Load(counted.url, workers=4, max_requests=200, max_seconds=60).run()
        green_pinned.wait_cut(20)
        blue_pinned.wait_cut(20)
    cut = list(green_pinned.cut.values()) + list(blue_pinned.cut.values())
    lived = sorted(round(seconds, 1) for seconds, _ in cut)
    seen = held(counted)
    print(
        f"\nfresh client: {dict(Counter(a.status for a in fresh.answers))}, slowest "
        f"{max(a.took for a in fresh.answers):.2f} s; backend held {seen}\n{len(cut)} slow connections cut after "
        f"{lived[0]}..{lived[-1]} s, answered {dict(Counter(status for _, status in cut))}"
    )
    assert len(fresh.answers) == 200 and all(a.status == 200 for a in fresh.answers), tally(fresh.answers)
    assert seen["blue"]["most"] <= 4 and seen["green"]["most"] <= 4, seen  # the fresh client's 4 workers, no more
    assert len(cut) == 2 * half and all(status in (None, 408) for _, status in cut), cut
    assert 6 <= lived[0] and lived[-1] <= 6 + 3 + 2, lived  # their last byte at 5-6 s, cut 3 s later


def test_a_client_past_its_limits_gets_a_429_and_others_are_served(counted):
    """From 127.0.0.2, 40 slow uploads: 16 (client_connections) are taken, the rest refused at once with a JSON 429
    and Retry-After; meanwhile 127.0.0.3 is served. From 127.0.0.4, 60 requests in a row: the rate (20/s, 30 more
    at once) refuses some with a 429; this host's own clients (trusted) are never limited."""
    put_weight(counted, 50)
    with Trickle(counted.url, 40, every=1.0, until=4.0, source="127.0.0.2") as slow:
        time.sleep(0.5)
        refused = dict(slow.cut)
        other = post(counted.url, source="127.0.0.3")
    one = post(counted.url, source="127.0.0.2")
    print(f"\n40 slow uploads from 127.0.0.2: {len(refused)} refused at once {Counter(s for _, s in refused.values())}")
    print(f"meanwhile from 127.0.0.3: {other[0]}; 127.0.0.2's next request after they ended: {one[0]}")
    assert len(refused) == 40 - 16 and {status for _, status in refused.values()} == {429}, refused
    assert other[0] == 200 and one[0] == 200
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.4"), timeout=15) as client:
        burst = [client.get(f"{counted.url}/health") for _ in range(60)]
    rated = Counter(r.status_code for r in burst)
    limited = [r for r in burst if r.status_code == 429]
    with httpx.Client(timeout=15) as client:
        trusted = Counter(client.get(f"{counted.url}/health").status_code for _ in range(60))
    print(f"60 in a row from 127.0.0.4: {dict(rated)}; from 127.0.0.1 (trusted): {dict(trusted)}")
    assert rated[200] >= 30 and rated[429] > 0 and set(rated) == {200, 429}, rated
    assert all(r.headers["retry-after"] == "1" and "too many" in r.json()["error"] for r in limited)
    assert trusted == {200: 60}


def test_a_header_must_arrive_whole_within_the_header_timeout(counted):
    """Headers sent one byte every 0.4 s (a gap far below the 3 s header_timeout) are cut 3 s after they began:
    the header's time is bounded as a whole."""
    with Trickle(counted.url, 8, every=1.0, until=60.0, head_every=0.4) as slow:
        slow.wait_cut(15)
    lived = sorted(round(seconds, 1) for seconds, _ in slow.cut.values())
    print(f"\n8 slow headers cut after {lived} s (each header needs ~{len(slow.head) * 0.4:.0f} s)")
    assert len(lived) == 8 and 2.5 <= lived[0] and lived[-1] <= 4.5, lived


def put_weight(settings, weight: int) -> None:
    state = routing.current(settings.state_dir / routing.STATE_FILE)
    routing.write(settings.state_dir / routing.STATE_FILE, state.next(green_weight=weight))
    time.sleep(0.1)


def test_slow_uploads_from_256_connections_leave_a_fresh_client_every_answer_within_a_second(trained, tmp_path):
    """The issue's figure on a whole stack (max_inflight 128 per version): 256 connections trickle bodies, one byte
    every 2 s and half pinned to each color, for 20 s; meanwhile a fresh client sends 1,000 requests: every one is
    200, none slower than 1 s. The slow ones are then cut by the body's time bound."""
    with running_stack(tmp_path, pins=True, green_weight=50, body_timeout=5) as stack:
        url = stack.settings.url
        half = 128
        with (
            Trickle(url, half, every=2.0, until=20.0, headers={"X-Canary": "always"}) as to_green,
            Trickle(url, half, every=2.0, until=20.0, headers={"X-Canary": "never"}) as to_blue,
        ):
            time.sleep(1)
            fresh = Load(url, workers=8, max_requests=1000, max_seconds=60).run()
            to_green.wait_cut(40)
            to_blue.wait_cut(40)
        cut = list(to_green.cut.values()) + list(to_blue.cut.values())
    statuses = Counter(a.status for a in fresh.answers)
    slowest = max((a.took or 0.0) for a in fresh.answers)
    lived = sorted(seconds for seconds, _ in cut)
    print(
        f"\nfresh client: {len(fresh.answers)} requests {dict(statuses)} {dict(tally(fresh.answers))}, slowest "
        f"{slowest * 1000:.0f} ms\n256 slow uploads: {len(cut)} cut, after {lived[0]:.1f}..{lived[-1]:.1f} s, "
        f"answered {dict(Counter(status for _, status in cut))}"
    )
    assert len(fresh.answers) == 1000 and statuses == {200: 1000}, statuses
    assert slowest < 1.0, f"slowest answer took {slowest:.2f} s"
    assert len(cut) == 2 * half and all(status in (None, 408) for _, status in cut), cut[:5]
    assert lived[-1] <= 20 + 5 + 3, lived[-5:]
    log = accesslog.parse((tmp_path / "logs" / "access.log").read_text())
    assert not [e for e in log if e["status"] == 503], "a request was shed"
