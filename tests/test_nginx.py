"""nginx alone, with the real templates and nginx/canary.js, and no backend: rendering, the routing state it reads
per request and its fallback to blue (every case of tests/data/routing_states.json, read by routing.py too), the
weighted split, sticky users, pins, and JSON 503s with Retry-After.

With no backend listening, every proxied request is answered by nginx itself (503, naming no version), but its
X-Canary-Route header still says where nginx sent it: enough to test the routing fast and exactly.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter

import httpx
import pytest

from canary_kit.core import routing
from canary_kit.core.errors import CanaryError
from canary_kit.stacks.backends import wait_ready
from canary_kit.stacks.local import Child
from canary_kit.stacks.nginx import (
    OPERATOR_URL,
    ROUTES_TEMPLATES,
    TEMPLATE_SUFFIX,
    LocalNginx,
    operator_transport,
    render,
    render_set,
)
from conftest import ROOT, local_settings, nginx_applies
from load import assert_split

needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")


def test_render_substitutes_only_named_placeholders():
    text = "listen ${CANARY_LISTEN}; proxy_pass http://$canary_route; set $x ${request_id};"
    assert (
        render(text, {"CANARY_LISTEN": "8000"}) == "listen 8000; proxy_pass http://$canary_route; set $x ${request_id};"
    )


@pytest.mark.parametrize("variables", [{}, {"CANARY_LISTEN": "1", "CANARY_OTHER": "2"}])
def test_render_refuses_missing_or_unexpected_variables(variables):
    with pytest.raises(CanaryError, match="template variables do not match"):
        render("listen ${CANARY_LISTEN};", variables)


def test_templates_rendered_together_share_one_set_of_variables():
    """The routes' files: every placeholder of any of them given, every variable used by at least one of them."""
    templates = {"a": "listen ${CANARY_LISTEN};", "b": "root ${CANARY_ROOT}; listen ${CANARY_LISTEN};"}
    both = {"CANARY_LISTEN": "1", "CANARY_ROOT": "/x"}
    assert render_set(templates, both) == {"a": "listen 1;", "b": "root /x; listen 1;"}
    for variables in ({"CANARY_LISTEN": "1"}, {**both, "CANARY_OTHER": "2"}):
        with pytest.raises(CanaryError, match="template variables do not match"):
            render_set(templates, variables)


@pytest.mark.parametrize("weight", [-1, 101, 150])
def test_a_bad_weight_is_refused_before_anything_is_written(weight):
    with pytest.raises(ValueError):
        routing.FALLBACK.next(green_weight=weight, shadow=False)


STATES = json.loads((ROOT / "tests" / "data" / "routing_states.json").read_text(encoding="utf-8"))


def case_id(case: dict) -> str:
    return case["name"]


def put_content(path, content: str | None) -> None:
    """The state file as the case has it (None: no file)."""
    path.unlink(missing_ok=True)
    if content is not None:
        path.write_bytes(content.encode("utf-8"))


def test_the_table_applies_the_fallback_to_every_invalid_file():
    assert all(("applies" in case) == case["valid"] for case in STATES["cases"])
    assert {"green_weight": 0, "shadow": False} == {k: STATES["fallback"][k] for k in ("green_weight", "shadow")}


@pytest.mark.parametrize("case", STATES["cases"], ids=case_id)
def test_routing_reads_each_state_file_as_the_table_says(tmp_path, case):
    """canary_kit/core/routing.py: a valid state is read as it is; any other reads as missing, and what is in force is
    the fallback."""
    path = tmp_path / routing.STATE_FILE
    put_content(path, case["content"])
    state = routing.read(path)
    if case["valid"]:
        assert state is not None
        assert {k: getattr(state, k) for k in case["applies"]} == case["applies"], state
    else:
        assert state is None
        in_force = routing.current(path)  # no change log beside it: the fallback
        assert in_force == routing.FALLBACK
        assert {k: getattr(in_force, k) for k in STATES["fallback"]} == STATES["fallback"]


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """A real nginx from the real templates, its backends' ports left closed; pins on (their routing is tested
    here; tests/test_pins.py has them off)."""
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed")
    settings = local_settings(tmp_path_factory.mktemp("bare-nginx"), pins=True)
    nginx = LocalNginx(settings)
    nginx.write()  # runs nginx -t
    child = Child("nginx", nginx.command(), settings.state_dir / "logs" / "nginx.log")
    try:
        child.start()
        wait_ready([child], {"nginx": f"{settings.url}/_nginx/ping"}, timeout=10)
        yield settings
    finally:
        child.stop()


def put_state(settings, **fields) -> None:
    (settings.state_dir / routing.STATE_FILE).write_text(json.dumps(fields))


def routes(settings, count: int, headers=None, cookies=None) -> Counter:
    with httpx.Client(headers=headers, cookies=cookies, timeout=5) as client:
        return Counter(client.get(f"{settings.url}/health").headers["x-canary-route"] for _ in range(count))


def applied(settings) -> dict:
    return nginx_applies(settings)


@needs_nginx
def test_rendered_routes_hold_addresses_but_no_split(bare):
    files = [bare.state_dir / name.removesuffix(TEMPLATE_SUFFIX) for name in ROUTES_TEMPLATES]
    text = "\n".join(f.read_text() for f in files)
    # canary.conf includes the servers' files by where they are
    assert [f'include "{f}";' for f in files[1:]] == re.findall(r"^include .*;$", files[0].read_text(), re.M)
    assert not re.search(r"\$\{CANARY_[A-Z_]+\}", text)  # no placeholder left behind
    assert f"127.0.0.1:{bare.blue_port}" in text and "split_clients" not in text
    assert str(bare.state_dir / routing.STATE_FILE) in text and "server_tokens off" in text


@needs_nginx
def test_nginx_applies_the_state_file_on_the_next_request(bare):
    for serial, (weight, shadow) in enumerate([(0, False), (37, False), (0, True), (100, False)], start=1):
        routing.write(
            bare.state_dir / routing.STATE_FILE, routing.RoutingState(green_weight=weight, shadow=shadow, serial=serial)
        )
        report = applied(bare)
        assert (report["green_weight"], report["shadow"], report["serial"]) == (weight, shadow, serial), report
        assert "problem" not in report and report["pid"] > 0


@needs_nginx
@pytest.mark.parametrize("case", STATES["cases"], ids=case_id)
def test_nginx_applies_each_state_file_as_the_table_says(bare, case):
    """canary.js, through a real nginx: a valid state is applied as it is, any other sends everything to blue."""
    put_content(bare.state_dir / routing.STATE_FILE, case["content"])
    report = applied(bare)
    if case["valid"]:
        assert "problem" not in report, report
        assert {k: report[k] for k in case["applies"]} == case["applies"], report
        return
    seen = routes(bare, 200)
    print(f"\n{case['content']!r}: nginx reports {report}; 200 requests went to {dict(seen)}")
    assert report["green_weight"] == 0 and report["shadow"] is False and report["problem"], report
    assert {k: report[k] for k in STATES["fallback"]} == STATES["fallback"], report
    assert seen == {"blue": 200}


@needs_nginx
@pytest.mark.parametrize("weight", [0, 1, 10, 50, 90, 100])
def test_the_weighted_split_holds_at_every_weight(bare, weight):
    put_state(bare, green_weight=weight, shadow=False, serial=weight + 1)
    seen = routes(bare, 2000)
    print(f"\nweight {weight}%: {dict(seen)} of 2000")
    assert seen["blue"] + seen["green"] == 2000
    assert_split(seen["green"], 2000, weight)


@needs_nginx
def test_users_are_sticky_and_green_only_grows_with_the_weight(bare):
    users = [f"user-{i}" for i in range(400)]
    on_green = {}
    with httpx.Client(timeout=5) as client:
        for weight in (5, 10, 25, 50, 90):
            put_state(bare, green_weight=weight, shadow=False, serial=1000 + weight)
            seen = {}
            for user in users:
                answers = {
                    client.get(f"{bare.url}/health", headers={"X-User-ID": user}).headers["x-canary-route"]
                    for _ in range(2)
                }
                assert len(answers) == 1, (user, answers)  # the same user, the same version
                seen[user] = answers.pop()
            on_green[weight] = {u for u, route in seen.items() if route == "green"}
    sizes = {w: len(s) for w, s in on_green.items()}
    print(f"\nusers on green by weight (of 400): {sizes}")
    weights = sorted(on_green)
    for low, high in zip(weights, weights[1:]):
        assert on_green[low] <= on_green[high], f"users left green when the weight rose {low}->{high}"
    for weight, group in on_green.items():
        assert_split(len(group), len(users), weight)


@needs_nginx
def test_pins_by_header_then_cookie_beat_the_weight(bare):
    put_state(bare, green_weight=1, shadow=False, serial=2000)
    assert routes(bare, 30, headers={"X-Canary": "always"}) == {"green": 30}
    assert routes(bare, 30, cookies={"canary": "always"}) == {"green": 30}
    assert routes(bare, 30, headers={"X-Canary": "never"}, cookies={"canary": "always"}) == {"blue": 30}
    assert routes(bare, 30, headers={"X-Canary": "maybe"}, cookies={"canary": "always"}) == {"green": 30}
    put_state(bare, green_weight=99, shadow=False, serial=2001)
    assert routes(bare, 30, headers={"X-Canary": "never"}) == {"blue": 30}
    assert routes(bare, 30, cookies={"canary": "never"}) == {"blue": 30}
    assert routes(bare, 30, headers={"X-Canary": "maybe"}, cookies={"canary": "never"}) == {"blue": 30}


@needs_nginx
def test_a_pin_never_reaches_a_version_at_0_percent(bare):
    """From the public port, a pin picks between the versions that have a share: at green 0% a pin to green is
    answered by blue, at 100% a pin to blue by green."""
    put_state(bare, green_weight=0, shadow=False, serial=2100)
    assert routes(bare, 30, headers={"X-Canary": "always"}) == {"blue": 30}
    assert routes(bare, 30, cookies={"canary": "always"}) == {"blue": 30}
    put_state(bare, green_weight=0, shadow=True, serial=2101)  # shadow: green gets copies, never a live request
    assert routes(bare, 30, headers={"X-Canary": "always"}) == {"blue": 30}
    put_state(bare, green_weight=100, shadow=False, serial=2102)
    assert routes(bare, 30, headers={"X-Canary": "never"}) == {"green": 30}
    assert routes(bare, 30, cookies={"canary": "never"}) == {"green": 30}


@needs_nginx
def test_no_version_answering_is_a_json_503_with_retry_after(bare):
    put_state(bare, green_weight=50, shadow=False, serial=3000)
    response = httpx.post(f"{bare.url}/predict", json={"instances": []})
    assert response.status_code == 503 and response.headers["retry-after"] == "1", response.headers
    assert response.headers["content-type"] == "application/json" and "retry" in response.json()["error"]
    big = httpx.post(
        f"{bare.url}/predict", content=b"x" * (2 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert big.status_code == 413 and "larger than" in big.json()["error"] and "retry-after" not in big.headers


@needs_nginx
def test_the_routing_report_is_on_the_admin_socket_only(bare):
    put_state(bare, green_weight=0, shadow=False, serial=5000)
    public = httpx.get(f"{bare.url}/_nginx/split")
    assert public.status_code == 503 and "green_weight" not in public.text  # proxied like any path: no backend here
    assert applied(bare)["serial"] == 5000
    ping = httpx.get(f"{bare.url}/_nginx/ping")
    assert ping.text == "pong\n" and "x-canary-route" not in ping.headers  # no state read for a liveness probe


@needs_nginx
def test_green_runs_in_the_slot_the_state_names(bare):
    """Green's requests go to slot a or b as the state says (the next version starts in the other one)."""
    for slot, port in (("green_a", bare.green_port), ("green_b", bare.green_port_b), ("green_a", bare.green_port)):
        put_state(bare, green_weight=100, shadow=False, green_slot=slot, serial=4000)
        tried = httpx.get(f"{bare.url}/health").headers["x-canary-upstream"]
        assert tried.startswith(f"127.0.0.1:{port}"), (slot, tried)  # then blue, its backup
    put_state(bare, green_weight=100, shadow=False, green_slot="green_c", serial=4001)
    assert routes(bare, 50) == {"blue": 50} and "green_slot" in applied(bare)["problem"]


@needs_nginx
def test_requests_pinned_to_a_free_green_go_to_blue_directly(bare):
    """After `canary finalize` green runs nothing: pins to green must not try its empty slot first."""
    put_state(
        bare, green_weight=0, shadow=False, green_slot="green_b", blue_version="v1.1.0", green_version=None, serial=6000
    )
    with httpx.Client(transport=operator_transport(bare), timeout=5) as operator:  # its pins reach any version
        for headers in (
            httpx.get(f"{bare.url}/health", headers={"X-Canary": "always"}).headers,
            operator.get(f"{OPERATOR_URL}/health", headers={"X-Canary": "always"}).headers,
        ):
            assert headers["x-canary-upstream"] == f"127.0.0.1:{bare.blue_port}", headers  # blue alone, once
            assert headers["x-canary-route"] == "blue"  # the version that serves it, not the pin's wish
    assert applied(bare)["green_free"] is True
