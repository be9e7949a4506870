"""Pins are the operator's choice (#27): off on the public port unless turned on (`pins`), never to a version at 0%
(after `canary rollback` too), always as asked through the admin socket (the operator's way in, which `canary` uses
to check each version through nginx). Pinned requests are logged as such and counted apart from the split's."""

from __future__ import annotations

import json
from collections import Counter
from itertools import cycle

import httpx
import pytest
from typer.testing import CliRunner

from canary_kit.cli.app import app
from canary_kit.core import accesslog
from canary_kit.stacks.nginx import OPERATOR_URL, operator_transport
from conftest import EXAMPLE_ROW, running_stack, settled
from load import assert_split

pytestmark = pytest.mark.integration
BLUE, GREEN = "v1.0.0", "v1.1.0"
USERS = [f"user-{i}" for i in range(50)]


def canary(settings, *args):
    return CliRunner().invoke(app, [*args, "--state-dir", str(settings.state_dir)])


@pytest.fixture(scope="module")
def pinned(trained, tmp_path_factory):
    """A stack with pins on, at 30% green."""
    with running_stack(tmp_path_factory.mktemp("pins-on"), pins=True, green_weight=30) as stack:
        yield stack.settings


@pytest.fixture(scope="module")
def unpinned(trained, tmp_path_factory):
    """A stack with pins as they are by default: off on the public port."""
    with running_stack(tmp_path_factory.mktemp("pins-off")) as stack:
        yield stack.settings


def pinning_requests(settings, count: int = 1000, pin: str = "always") -> list[tuple[str, str | None, str]]:
    """`count` requests that each try to pin, in turn: the header, the cookie, one of 50 user ids. Returns (kind,
    version that answered, request id) per request."""
    kinds = cycle(
        [("header", {"X-Canary": pin}, {}), ("cookie", {}, {"canary": pin})]
        + [("user", {"X-User-ID": user}, {}) for user in USERS]
    )
    answered = []
    with httpx.Client(timeout=15) as client:
        for _ in range(count):
            kind, headers, cookies = next(kinds)
            client.cookies.clear()
            r = client.post(
                f"{settings.url}/predict", json={"instances": [EXAMPLE_ROW]}, headers=headers, cookies=cookies
            )
            assert r.status_code == 200, r.text
            answered.append((kind, r.headers.get("x-model-version"), r.headers["x-request-id"]))
    return answered


def logged(settings, request_ids: set[str]) -> list[dict]:
    def read() -> list[dict]:
        entries = accesslog.parse((settings.state_dir / "logs" / "access.log").read_text())
        return [e for e in entries if e["request_id"] in request_ids]

    # nginx logs a request just after its answer has left: wait for the last ones (5 s at most)
    return settled(read, lambda found: len(found) >= len(request_ids), timeout=5, step=0.1)


def test_after_a_rollback_no_pin_reaches_green_but_the_operators_does(pinned):
    assert canary(pinned, "rollback", "-m", "test: pins after a rollback").exit_code == 0
    answered = pinning_requests(pinned)
    by_kind = {kind: Counter(v for k, v, _ in answered if k == kind) for kind in ("header", "cookie", "user")}
    with httpx.Client(transport=operator_transport(pinned), timeout=15) as operator:
        asked = operator.post(
            f"{OPERATOR_URL}/predict", json={"instances": [EXAMPLE_ROW]}, headers={"X-Canary": "always"}
        )
    entries = logged(pinned, {rid for _, _, rid in answered})
    pins = Counter(e["pin"] for e in entries)
    print(f"\nafter `canary rollback`, 1,000 requests that pin: {by_kind}; logged pins {dict(pins)}")
    print(f"the operator's pin through the admin socket: {asked.status_code} {asked.headers.get('x-model-version')}")
    assert {v for c in by_kind.values() for v in c} == {BLUE}, by_kind
    assert sum(sum(c.values()) for c in by_kind.values()) == 1000
    assert pins["green"] == sum(by_kind[k][BLUE] for k in ("header", "cookie"))  # asked for green, got blue
    assert asked.status_code == 200 and asked.headers["x-model-version"] == GREEN  # green runs: pins never reach it
    report = json.loads(canary(pinned, "status", "--json").output)
    table = canary(pinned, "status").output
    print(f"canary status: pinned {report['pinned']}\n{table}")
    assert report["pinned"] == {"green": 41, "blue": 0}  # since the rollback: the 40 above and the operator's
    assert "pinned: 41 requests asked for green, 0 for blue" in table
    assert canary(pinned, "set-weight", "30", "-m", "test: back to 30%").exit_code == 0


def test_with_pins_off_a_pin_is_an_ordinary_request_at_any_weight(unpinned):
    """The header, the cookie and the user ids change nothing: each request is drawn at the weight (binomial at 50%,
    all blue at 0%, all green at 100%), a user id is not sticky, and nothing is logged as pinned."""
    for weight in (0, 50, 100):
        assert canary(unpinned, "set-weight", str(weight), "-m", "test: pins off").exit_code == 0
        answered = pinning_requests(unpinned)
        versions = Counter(v for _, v, _ in answered)
        pins = Counter(e["pin"] for e in logged(unpinned, {rid for _, _, rid in answered}))
        print(
            f"\npins off, green {weight}%: 1,000 requests that try to pin were answered by {dict(versions)}; "
            f"logged pins {dict(pins)}"
        )
        assert sum(versions.values()) == 1000 and pins == {"": 1000}, (versions, pins)
        assert_split(versions[GREEN], 1000, weight)
        if weight == 50:  # one user id, 40 requests: drawn each time, not sticky
            with httpx.Client(timeout=15) as client:
                one = Counter(
                    client.post(
                        f"{unpinned.url}/predict", json={"instances": [EXAMPLE_ROW]}, headers={"X-User-ID": "u"}
                    ).headers["x-model-version"]
                    for _ in range(40)
                )
            print(f"one user id, 40 requests at 50%: {dict(one)}")
            assert set(one) == {BLUE, GREEN}, one


def test_the_kits_own_checks_pin_through_the_admin_socket_with_pins_off(unpinned):
    """`canary up` checked each version through nginx (it started); the operator's pins reach either version at any
    weight, and are logged as pinned."""
    assert canary(unpinned, "set-weight", "0", "-m", "test: operator pins").exit_code == 0
    with httpx.Client(transport=operator_transport(unpinned), timeout=15) as operator:
        answers = {
            pin: operator.post(f"{OPERATOR_URL}/predict", json={"instances": [EXAMPLE_ROW]}, headers={"X-Canary": pin})
            for pin in ("always", "never")
        }
    public = httpx.post(f"{unpinned.url}/predict", json={"instances": [EXAMPLE_ROW]}, headers={"X-Canary": "always"})
    entries = logged(unpinned, {r.headers["x-request-id"] for r in answers.values()})
    print(
        f"\nat 0%, through the admin socket: { {p: r.headers.get('x-model-version') for p, r in answers.items()} }; "
        f"on the public port: {public.headers.get('x-model-version')}; logged pins {[e['pin'] for e in entries]}"
    )
    assert answers["always"].headers["x-model-version"] == GREEN and answers["never"].headers["x-model-version"] == BLUE
    assert public.headers["x-model-version"] == BLUE
    assert sorted(e["pin"] for e in entries) == ["blue", "green"]
