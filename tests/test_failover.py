"""Failover: when a version's process dies under load, nginx sends its requests to the other; nobody notices."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from canary_kit.cli.app import app
from conftest import running_stack
from load import Load, tally

pytestmark = pytest.mark.integration


@pytest.fixture
def half_and_half(trained, tmp_path):
    """A stack of its own at 50/50: this test kills one of its processes."""
    with running_stack(tmp_path, green_weight=50) as running:
        yield running


def test_killing_green_under_load_fails_no_request(half_and_half):
    own_stack = half_and_half
    green = next(c for c in own_stack.children if c.name == "green_a")
    with Load(own_stack.settings.url, workers=8, max_requests=1500, max_seconds=240) as load:
        load.wait_for(0, 300)
        green.kill()  # the serve process and its worker, at once
        load.wait_for(0, 1200, timeout=200)
    counts = tally(load.answers)
    print(f"\nanswers with green killed after 300: {dict(counts)}")
    failed = {k: v for k, v in counts.items() if k.startswith("failed")}
    assert not failed, counts
    assert counts["v1.1.0"] > 0 and counts["v1.0.0"] > 600, counts  # green served before it died; blue took over

    result = CliRunner().invoke(app, ["status", "--json", "--state-dir", str(own_stack.settings.state_dir)])
    report = json.loads(result.output)
    assert report["backends"]["green"]["healthy"] is False and report["backends"]["blue"]["healthy"] is True
    table = CliRunner().invoke(app, ["status", "--state-dir", str(own_stack.settings.state_dir)]).output
    assert "DOWN" in table, table
