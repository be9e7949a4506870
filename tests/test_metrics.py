"""Figures from Prometheus counters, and the rollout's verdicts on them (no processes)."""

from __future__ import annotations

import math

import pytest

from canary_kit.core.errors import CanaryError
from canary_kit.observe.metrics import Snapshot, quantile, window
from canary_kit.policy.gates import Figures, Step, Window, decide
from canary_kit.policy.spec import load_spec

TEXT = """# TYPE bentoml_service_request_total counter
bentoml_service_request_total{endpoint="/predict",http_response_code="200",service_name="s"} 90.0
bentoml_service_request_total{endpoint="/predict",http_response_code="500",service_name="s"} 10.0
bentoml_service_request_total{endpoint="/health",http_response_code="200",service_name="s"} 7.0
# TYPE bentoml_service_request_duration_seconds histogram
bentoml_service_request_duration_seconds_bucket{endpoint="/predict",http_response_code="200",le="0.01"} 50.0
bentoml_service_request_duration_seconds_bucket{endpoint="/predict",http_response_code="200",le="0.1"} 90.0
bentoml_service_request_duration_seconds_bucket{endpoint="/predict",http_response_code="200",le="+Inf"} 90.0
bentoml_service_request_duration_seconds_bucket{endpoint="/predict",http_response_code="500",le="0.01"} 0.0
bentoml_service_request_duration_seconds_bucket{endpoint="/predict",http_response_code="500",le="0.1"} 10.0
bentoml_service_request_duration_seconds_bucket{endpoint="/predict",http_response_code="500",le="+Inf"} 10.0
"""


def test_snapshot_reads_only_predict_and_sums_status_codes():
    snap = Snapshot.parse(TEXT)
    assert snap.by_status == {"200": 90.0, "500": 10.0}
    assert snap.buckets == {0.01: 50.0, 0.1: 100.0, math.inf: 100.0}


def test_quantile_interpolates_like_prometheus():
    buckets = {0.01: 50.0, 0.1: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.75, buckets) == pytest.approx(0.01 + 0.09 * 0.5)
    assert quantile(0.99, {0.01: 0.0, math.inf: 5.0}) == 0.01  # beyond the last bound: that bound
    assert quantile(0.5, {0.01: 0.0, math.inf: 0.0}) is None


def test_window_is_the_difference_and_survives_a_restart():
    before = Snapshot(by_status={"200": 900.0, "500": 100.0}, buckets={0.1: 1000.0, math.inf: 1000.0})
    after = Snapshot.parse(TEXT)
    assert window(None, after).requests == 100 and window(None, after).errors == 10
    restarted = window(before, after)  # a series fell: the backend restarted, count from zero
    assert restarted.requests == 100 and restarted.errors == 10 and restarted.error_rate == 0.1
    grown = Snapshot(by_status={"200": 95.0, "500": 10.0}, buckets={0.01: 55.0, 0.1: 105.0, math.inf: 105.0})
    assert window(after, grown).requests == 5 and window(after, grown).errors == 0


def figures(requests, errors, p99=10.0):
    return Figures(requests=requests, errors=errors, error_rate=errors / requests if requests else None, p99_ms=p99)


OUTCOME = {"advance": "pass", "hold": "inconclusive", "fail": "fail"}


@pytest.mark.parametrize(
    "green,blue,verdict",
    [
        (figures(100, 0), figures(900, 0), "advance"),
        (figures(10, 0), figures(900, 0), "hold"),
        (figures(10, 3), figures(900, 0), "fail"),  # too quiet to pass, but these errors already break the gate
        (figures(100, 5), figures(900, 0), "fail"),
        (figures(100, 0, p99=900), figures(900, 0), "fail"),
        (figures(100, 0, p99=40), figures(900, 0, p99=10), "fail"),  # 4x blue's p99
        (figures(100, 0, p99=40), figures(0, 0, p99=None), "advance"),  # blue idle at 100%: no ratio
        (None, figures(900, 0), "fail"),
    ],
)
def test_judge(green, blue, verdict):
    fixed = {"mode": "fixed", "max_error_rate": 0.01, "max_p99_ms": 500, "max_p99_ratio": 3, "min_requests": 50}
    spec = load_spec(None, fixed)
    assert decide(spec, Step(1, 10), Window(green, blue)).outcome == OUTCOME[verdict]


def test_committed_spec_loads_and_flags_override_it():
    spec = load_spec(None, {"steps": [5, 100], "max_p99_ms": 200.0, "hold_seconds": None})
    assert spec.steps == [5, 100] and spec.gates.max_p99_ms.threshold == 200 and spec.hold_seconds == 30


@pytest.mark.parametrize("overrides", [{"steps": [50, 10, 100]}, {"steps": [10, 50]}, {"max_error_rate": 2.0}])
def test_bad_specs_are_refused_in_one_line(overrides):
    with pytest.raises(CanaryError, match="invalid rollout spec"):
        load_spec(None, overrides)


def test_a_spec_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("- 10\n- 100\n")
    with pytest.raises(CanaryError, match="must be a mapping"):
        load_spec(path, {})


@pytest.mark.parametrize("gate", ["true", "abc", "[0.1]"])
@pytest.mark.parametrize("flags", [{}, {"max_error_rate": 0.05}, {"dry_run": ["max_error_rate"]}])
def test_a_malformed_gate_is_refused_in_one_line_whatever_the_flags(tmp_path, gate, flags):
    path = tmp_path / "spec.yaml"
    path.write_text(f"gates: {{max_error_rate: {gate}}}\n")
    with pytest.raises(CanaryError, match="gates.max_error_rate must be a number, null or a mapping"):
        load_spec(path, dict(flags))


def logged(route: str, upstream: str, status: str, seconds: str, pin: str = "", path: str = "/predict") -> dict:
    """An access-log entry's fields that split_http reads, as nginx writes them."""
    return {
        "path": path,
        "route": route,
        "pin": pin,
        "shadow": False,
        "upstream": upstream,
        "upstream_status": status,
        "upstream_response_time": seconds,
    }


def test_split_http_judges_the_tries_of_the_splits_requests_only():
    """Each try is the version's it reached: the routed upstream's are the routed version's, @failover's the other's;
    a version at its cap reached no server, and a kept-alive connection tried again is nginx's; pinned requests,
    shadow copies and other paths are left out."""
    from canary_kit.observe.metrics import Http, split_http

    blue, green = "127.0.0.1:3001", "127.0.0.1:3002"
    entries = [
        logged("blue", blue, "200", "0.010"),
        logged("blue", blue, "200", "0.030"),
        logged("green", green, "200", "0.020"),
        logged("green", f"{green} : {blue}", "500 : 200", "0.005 : 0.012"),  # green failed, blue answered
        logged("blue", f"{blue}, {blue}", "502, 200", "-, 0.008"),  # a closed kept-alive connection, then blue
        logged("blue", "blue", "502", "-"),  # blue at its cap: shed, no server tried
        logged("green", green, "200", "0.900", pin="green"),  # pinned: not the split's
        {**logged("green", green, "200", "0.900"), "shadow": True},  # a shadow copy
        logged("blue", blue, "200", "0.900", path="/health"),  # not a prediction endpoint
    ]
    found = split_http(entries, ("/predict",))
    print(f"\n{found}")
    assert found["blue"] == Http(requests=4, errors=0, error_rate=0.0, p50_ms=10.0, p99_ms=30.0)
    assert found["green"] == Http(requests=2, errors=1, error_rate=0.5, p50_ms=5.0, p99_ms=20.0)
    assert split_http([], ("/predict",))["green"] == Http(
        requests=0, errors=0, error_rate=None, p50_ms=None, p99_ms=None
    )


def test_the_baseline_is_written_as_it_always_was_and_read_back_typed(tmp_path):
    """baseline.json: {"since", "green_weight", "backends": {color: Snapshot.to_json() or null}}, read into a
    Baseline of Snapshots; a damaged one counts from the start (an empty Baseline)."""
    import json

    from canary_kit.observe.scrape import BASELINE, Baseline, read_baseline, write_baseline

    snap = Snapshot.parse(TEXT)
    write_baseline(tmp_path, "2025-01-01T00:00:00+00:00", 10, {"blue": snap, "green": None})
    written = json.loads((tmp_path / BASELINE).read_text())
    assert written == {
        "since": "2025-01-01T00:00:00+00:00",
        "green_weight": 10,
        "backends": {"blue": snap.to_json(), "green": None},
    }
    back = read_baseline(tmp_path)
    assert (back.since, back.green_weight, back.backends["green"]) == ("2025-01-01T00:00:00+00:00", 10, None)
    assert back.backends["blue"] == Snapshot.from_json(snap.to_json()) and window(None, back.backends["blue"]).requests
    for damaged in (
        "{",
        "[]",
        '{"backends": 3}',
        '{"backends": {"blue": "x"}}',
        '{"backends": {"blue": {"buckets": 1}}}',
    ):
        (tmp_path / BASELINE).write_text(damaged)
        assert read_baseline(tmp_path) == Baseline(), damaged
