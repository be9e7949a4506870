"""`canary rollout` and `canary shadow` on real stacks: promote a healthy green, roll back a dying one, hold
when traffic is too thin, and measure shadow agreement exactly."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import httpx
import pandas as pd
import pytest
from typer.testing import CliRunner

from canary_kit.cli.app import app
from canary_kit.rollout.shadow import run_shadow
from canary_kit.stacks.targets import LocalTarget
from canary_kit.steer.control import applied, split_of
from conftest import EXAMPLE_ROW, ROOT, nginx_pids
from load import Load, tally

pytestmark = pytest.mark.integration
# Short steps and loose latency gates: this tests the mechanism on a shared 2-core machine, not the speed (the
# sequential latency comparison is measured, not acted on: tests/test_quality_gates.py says why). The default mode is
# sequential (a step ends on evidence, at least --min-step-seconds); --hold is the fixed mode's.
FAST = [
    *("--min-step-seconds", "2", "--hold", "3", "--min-requests", "5", "--min-rows", "20"),
    *("--max-p99-ms", "10000", "--max-p99-ratio", "50", "--dry-run", "max_slower_share"),
]


def canary(settings, *args):
    return CliRunner().invoke(app, [*args, "--state-dir", str(settings.state_dir)])


@pytest.fixture
def at_ten(stack):
    assert canary(stack.settings, "set-weight", "10").exit_code == 0
    try:
        yield stack
    finally:
        canary(stack.settings, "set-weight", "10")


def test_healthy_green_is_promoted_step_by_step_with_no_failed_request(at_ten):
    """A 4-step rollout under 16 keep-alive clients that never resend: no failed request, no nginx reload."""
    settings = at_ten.settings
    pids_before = nginx_pids(at_ten)
    with Load(settings.url, workers=16, max_requests=200_000, max_seconds=300) as load:
        load.wait_for(0, 30)
        result = canary(settings, "rollout", *FAST)
    counts, pids_after = tally(load.answers), nginx_pids(at_ten)
    print(
        f"\n{result.output}\n{len(load.answers)} client requests during the rollout: {dict(counts)}"
        f"\nnginx master and workers before {pids_before}, after {pids_after}"
    )
    assert result.exit_code == 0, result.output
    assert "promoted" in result.output
    assert split_of(LocalTarget(settings.state_dir))[0] == 100
    assert not load.failed(), counts
    assert pids_after == pids_before, "nginx was reloaded or restarted"
    reports = sorted((settings.state_dir / "rollouts").glob("rollout-*.json"))
    report = json.loads(reports[-1].read_text())
    assert [c["weight"] for c in report["checks"] if c["verdict"] == "advance"] == [10, 25, 50, 100]
    assert reports[-1].with_suffix(".md").is_file() and reports[-1].with_suffix(".svg").is_file()


def test_too_little_traffic_holds_and_does_not_promote(at_ten):
    """Fixed mode: two quiet windows, then a pause. (Sequential mode pauses at max_step_seconds: tests/test_driver.)"""
    args = ["--mode", "fixed", "--min-requests", "1000", "--max-inconclusive", "2"]
    result = canary(at_ten.settings, "rollout", *FAST, *args)
    print(f"\n{result.output}")
    assert result.exit_code == 2, result.output
    assert "paused" in result.output and result.output.count("HOLD") == 2
    assert split_of(LocalTarget(at_ten.settings.state_dir))[0] == 10


@contextmanager
def rollout_reaching(settings, weight: int, outcome: dict):
    """Run `canary rollout` in the background; enter once green has `weight`; on leaving, wait for its result."""
    rolling = threading.Thread(target=lambda: outcome.update(result=canary(settings, "rollout", *FAST)))
    rolling.start()
    deadline = time.monotonic() + 60
    while split_of(LocalTarget(settings.state_dir))[0] < weight and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield
    finally:
        rolling.join(timeout=120)


def test_green_dying_mid_rollout_is_rolled_back_and_clients_see_no_error(own_stack):
    settings = own_stack.settings
    green = next(c for c in own_stack.children if c.name == "green_a")
    outcome = {}
    with Load(settings.url, workers=6, max_requests=200_000, max_seconds=300) as load:
        load.wait_for(0, 30)
        with rollout_reaching(settings, 25, outcome):
            green.kill()  # mid-rollout, at step 2
    result, counts = outcome["result"], tally(load.answers)
    print(f"\n{result.output}\nclient answers: {dict(counts)}")
    assert result.exit_code == 1, result.output
    assert "rolled back" in result.output and "green is not ready" in result.output
    assert split_of(LocalTarget(settings.state_dir))[0] == 0
    assert not [k for k in counts if k.startswith("failed")], counts


def test_shadow_agreement_matches_the_models_on_the_same_rows(at_ten):
    import bentoml
    import joblib

    settings = at_ten.settings
    rows = pd.read_csv(ROOT / "data" / "data.csv").drop(columns="target")
    rows = rows.astype(object).where(rows.notna(), None)
    batches = [rows.iloc[i : i + 4] for i in range(0, len(rows), 4)]
    target = LocalTarget(settings.state_dir)
    report = {}
    shadowing = threading.Thread(target=lambda: report.update(run_shadow(target, 12, lambda _: None)))
    shadowing.start()
    deadline = time.monotonic() + 10
    while not (applied(target) or {}).get("shadow") and time.monotonic() < deadline:
        time.sleep(0.05)
    with httpx.Client(timeout=10) as client:
        for batch in batches:
            r = client.post(f"{settings.url}/predict", json={"instances": batch.to_dict(orient="records")})
            assert r.status_code == 200 and r.json()["model_version"] == "v1.0.0", r.text  # blue answers all
    shadowing.join(timeout=60)

    models = {
        v: joblib.load(bentoml.models.get(f"penguin_classifier:{v}").path_of("model.joblib"))
        for v in ("v1.0.0", "v1.1.0")
    }
    frame = pd.read_csv(ROOT / "data" / "data.csv").drop(columns="target")
    blue, green = (models[v].predict(frame) for v in ("v1.0.0", "v1.1.0"))
    expected = round(float((blue == green).mean()), 4)
    print(f"\nshadow report: {report}\nagreement computed from the models: {expected}")
    assert report["rows_compared"] == len(frame) and report["requests_mirrored"] == len(batches)
    assert report["agreement"] == expected and expected < 1.0
    assert report["green_failed_copies"] == 0
    assert split_of(target)[0] == 10  # the weight it had before


def test_shadow_after_a_promote_is_refused_and_changes_nothing(at_ten):
    settings = at_ten.settings
    assert canary(settings, "promote").exit_code == 0
    before = (settings.state_dir / "routing.json").read_bytes()
    refused = canary(settings, "shadow", "--seconds", "1")
    print(f"\n{refused.output}")
    assert refused.exit_code == 1 and "shadow would send everyone back to blue" in refused.output, refused.output
    assert (settings.state_dir / "routing.json").read_bytes() == before


def test_a_frozen_green_in_shadow_mode_never_slows_a_client(own_stack):
    """nginx finishes a request only when its mirrored copy is done: the relay answers each copy at once, so a
    keep-alive client's next request never waits for green, and green's late answers are still logged."""
    import psutil

    from canary_kit.steer.control import set_weight

    settings = own_stack.settings
    target = LocalTarget(settings.state_dir)
    green = psutil.Process(next(c for c in own_stack.children if c.name == "green_a").proc.pid)
    frozen = [green, *green.children(recursive=True)]
    set_weight(target, 0, reason="test: shadow", shadow=True)
    mark, timings, ids = target.log_mark(), [], []
    body = {"instances": [EXAMPLE_ROW]}
    rows = pd.read_csv(ROOT / "data" / "data.csv").drop(columns="target").sample(1000, replace=True, random_state=0)
    batch = {"instances": rows.astype(object).where(rows.notna(), None).to_dict(orient="records")}
    with httpx.Client(timeout=10) as client:  # the largest batch: its copy's answer has the largest headers
        r = client.post(f"{settings.url}/predict", json=batch)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1000, r.text[:300]
        ids.append(r.headers["x-request-id"])
    try:
        for p in frozen:
            p.suspend()
        with httpx.Client(timeout=10) as client:  # one keep-alive connection that never resends
            for _ in range(30):
                started = time.monotonic()
                r = client.post(f"{settings.url}/predict", json=body)
                timings.append(time.monotonic() - started)
                assert r.status_code == 200 and r.headers["x-model-version"] == "v1.0.0", r.text
                ids.append(r.headers["x-request-id"])
        time.sleep(1)
    finally:
        for p in frozen:
            p.resume()
        set_weight(target, 10, reason="test: shadow done")
    copies, deadline = {}, time.monotonic() + 30
    while len(copies) < len(ids) and time.monotonic() < deadline:  # green answers the copies it was sent
        copies = {e["request_id"]: e["upstream_status"] for e in target.log_since(mark) if e.get("shadow")}
        time.sleep(0.2)
    answered = sum(copies.get(i) == "200" for i in ids)
    print(
        f"\n30 requests with green frozen: median {sorted(timings)[15] * 1000:.1f} ms, "
        f"max {max(timings) * 1000:.1f} ms; green answered {answered} of {len(ids)} copies (one of 1,000 rows)"
    )
    # a copy that waited for green would hold each next request for the relay's 1 s timeout at least
    assert sorted(timings)[15] < 0.5, timings
    assert answered == len(ids), copies


def test_an_operator_rollback_during_a_rollout_stands(at_ten):
    """The rollout never overwrites a change someone else made: it stops, and green stays where they put it."""
    settings = at_ten.settings
    outcome = {}
    with Load(settings.url, workers=4, max_requests=200_000, max_seconds=200) as load:
        load.wait_for(0, 20)
        with rollout_reaching(settings, 25, outcome):
            assert canary(settings, "rollback", "-m", "operator").exit_code == 0
    result = outcome["result"]
    print(f"\n{result.output}")
    assert result.exit_code == 1 and "stopped" in result.output and "changed by someone else" in result.output
    assert split_of(LocalTarget(settings.state_dir))[0] == 0
    assert not [k for k in tally(load.answers) if k.startswith("failed")]
