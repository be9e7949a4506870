"""The dashboard's pieces without a stack: the rollout's progress channel, the charts, the token."""

from __future__ import annotations

import json

import pytest

from canary_kit.core.errors import CanaryError
from canary_kit.dashboard import charts
from canary_kit.dashboard.server import get_token, is_loopback
from canary_kit.policy.evidence import Figures
from canary_kit.rollout import live
from canary_kit.rollout.driver import Check, Rollout


def rollout(started: str = "2026-01-01T00:00:00+00:00") -> Rollout:
    return Rollout(spec={"steps": [10, 100], "hold_seconds": 5}, started=started)


def test_the_channel_publishes_progress_and_takes_only_requests_meant_for_its_rollout(tmp_path):
    (tmp_path / "rollouts").mkdir()
    (tmp_path / "rollouts" / "control.json").write_text('{"action": "abort", "rollout": "an old one"}')
    result = rollout()
    channel = live.Channel(tmp_path, result)
    assert not (tmp_path / "rollouts" / "control.json").exists(), "a request left for an earlier rollout is dropped"
    channel.publish(step=1, weight=10)
    result.checks.append(Check(1, 10, "hold", "only 3 rows", 5.0, outcome="inconclusive"))
    channel.publish()
    seen = live.read(tmp_path)
    assert (seen["state"], seen["step"], seen["weight"], seen["steps"]) == ("running", 1, 10, [10, 100])
    assert seen["checks"][0]["wall"] == pytest.approx(channel.t0_wall + 5.0, abs=0.1)

    (tmp_path / "rollouts" / "control.json").write_text('{"action": "pause", "rollout": "another one"}')
    channel.check()  # not for this rollout: ignored, and removed
    assert not (tmp_path / "rollouts" / "control.json").exists()
    (tmp_path / "rollouts" / "control.json").write_text(
        json.dumps({"action": "pause", "rollout": result.started, "by": "ana", "reason": "lunch"})
    )
    with pytest.raises(live.Interrupted) as asked:
        channel.check()
    assert (asked.value.action, asked.value.by, asked.value.reason) == ("pause", "ana", "lunch")

    result.outcome = "paused"
    channel.publish()
    assert live.read(tmp_path)["state"] == "paused"
    with pytest.raises(CanaryError, match="no rollout is running"):
        live.request(tmp_path, "pause", "ana")


def test_a_running_rollout_whose_process_is_gone_reads_as_interrupted(tmp_path):
    live.Channel(tmp_path, rollout())
    data = json.loads((tmp_path / "rollouts" / "current.json").read_text())
    (tmp_path / "rollouts" / "current.json").write_text(json.dumps({**data, "pid": 2**22 + 12345}))
    assert live.read(tmp_path)["state"] == "interrupted"
    with pytest.raises(CanaryError, match="no rollout is running"):
        live.request(tmp_path, "abort", "ana")


def test_charts_share_one_time_axis_and_escape_what_they_show():
    now = 1_000_000.0
    samples = [
        {
            "t": now - 30 + i,
            "weight": 10,
            "divergence": 0.1,
            "blue": {"rps": 100.0, "error_rate": 0.0, "p50_ms": 5.0, "p99_ms": 20.0, "confidence": 0.9},
            "green": None
            if i == 10
            else {"rps": 10.0, "error_rate": 0.01, "p50_ms": 6.0, "p99_ms": 30.0, "confidence": 0.7},
        }
        for i in range(30)
    ]
    history = [
        {
            "unix": now - 20,
            "time": "2026-01-01T00:00:00+00:00",
            "event": "set-weight",
            "old_green_weight": 0,
            "new_green_weight": 10,
            "reason": "<script>alert(1)</script>",
        }
    ]
    gate = {"name": "max_error_rate", "status": "inconclusive", "figure": 0.0, "threshold": 0.01, "dry_run": False}
    gate |= {"detail": "<b>", "low": -0.001, "high": 0.02, "tolerance": 0.002}  # a sequential gate's evidence
    green = Figures(
        requests=40, errors=1, error_rate=0.025, p99_ms=30.0, rows=40, class_rows={"a": 40}, latency_ms={6: 40}
    )
    blue = Figures(requests=400, errors=0, error_rate=0.0, p99_ms=20.0, rows=400, class_rows={"a": 300, "b": 100})
    look = Check(1, 10, "hold", "x", 5.0, green=green, blue=blue, outcome="fail", gates=[gate])
    checks = [{**look.to_json(), "wall": now - 5}]  # as current.json holds it: figures as JSON, plus `wall`
    assert Check.from_json(json.loads(json.dumps(checks[0]))) == look
    drawn = charts.render(samples, history, {"checks": checks}, now)
    assert set(drawn) == {"weight", "rps", "errors", "latency", "confidence", "divergence", "gates", "evidence"}
    assert all(svg.startswith("<svg") for svg in drawn.values())
    assert "<script>" not in "".join(drawn.values()) and "&lt;script&gt;" in drawn["weight"]
    assert "<b>" not in drawn["evidence"] and "fails above 0.002" in drawn["evidence"]
    assert drawn["rps"].count("<polyline") == 3, "green's missing second breaks its line in two"
    assert charts.render([], [], None, now)["gates"] == ""


def test_the_token_and_loopback(monkeypatch):
    monkeypatch.delenv("CANARY_DASHBOARD_TOKEN", raising=False)
    assert len(get_token()) >= 32 and get_token() != get_token()
    monkeypatch.setenv("CANARY_DASHBOARD_TOKEN", "short")
    with pytest.raises(CanaryError, match="at least 16"):
        get_token()
    assert [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0", "evil.example")] == [
        True,
        True,
        True,
        True,
        False,
        False,
    ]
