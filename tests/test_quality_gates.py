"""The quality gates on real stacks (real nginx, real `bentoml serve`), under keep-alive clients sending the data's
rows: a weak green that answers 200, fast and wrong passes every HTTP gate and is stopped by the model's figures;
the next healthy version passes them; a split that is not the one set fails on SRM; the shadow gate tells the two
apart before any user sees green; bad gate values are refused with the state untouched."""

from __future__ import annotations

import json
import threading
import time

import pytest
from typer.testing import CliRunner

from canary_kit.cli.app import app
from canary_kit.stacks.targets import LocalTarget
from canary_kit.steer.control import split_of
from conftest import NEXT, WEAK, canary_process, data_rows, running_stack
from load import Load, tally

pytestmark = pytest.mark.integration
# Loose latency gates (a shared 2-core machine); the quality gates keep their committed thresholds and samples.
# The default mode is sequential; the pause test runs the fixed mode (its JS-divergence gate). The sequential latency
# comparison is measured and reported, not acted on: on this shared machine where a backend runs moves its latency
# by more than the tolerance (v1.2.0, whose model costs 15 us more per row, was slower in 62% of pairs at 50% in one
# run of three), as the fixed mode's p99 ratio is loosened to 50 here.
HTTP = ["--min-requests", "20", "--max-p99-ms", "10000", "--max-p99-ratio", "50", "--dry-run", "max_slower_share"]
HTTP += ["--min-step-seconds", "2"]  # a step ends on its evidence, after 2 s at least (the default 5 s: slow effects)
QUALITY = ["max_class_shift", "max_confidence_drop", "srm_p_value"]


def canary(settings, *args):
    return CliRunner().invoke(app, [*args, "--state-dir", str(settings.state_dir)])


@pytest.fixture
def weak_green(more_versions, tmp_path):
    with running_stack(tmp_path, green_version=WEAK, green_weight=10) as stack:
        yield stack


@pytest.fixture(scope="module")
def next_green(more_versions, tmp_path_factory):
    """Pins on (sticky users among them): the SRM test skews the split with one user id."""
    with running_stack(tmp_path_factory.mktemp("next"), green_version=NEXT, green_weight=10, pins=True) as stack:
        yield stack


def rows_load(settings, **kwargs) -> Load:
    return Load(
        settings.url,
        workers=kwargs.pop("workers", 12),
        max_requests=kwargs.pop("max_requests", 60000),
        max_seconds=kwargs.pop("max_seconds", 240),
        rows=data_rows(),
        **kwargs,
    )


def last_report(settings) -> dict:
    return json.loads(sorted((settings.state_dir / "rollouts").glob("rollout-*.json"))[-1].read_text())


def gate_marks(report: dict, name: str) -> list[str]:
    return [
        g["status"] + (" (dry-run)" if g["dry_run"] else "")
        for c in report["checks"]
        for g in c["gates"]
        if g["name"] == name
    ]


def test_a_weak_green_passes_every_http_gate_but_is_rolled_back_on_class_divergence(weak_green):
    settings = weak_green.settings
    with rows_load(settings) as load:
        load.wait_for(0, 50)
        # The control: the quality gates in dry run. Every HTTP gate passes, so the weak model is promoted.
        dry = canary(settings, "rollout", "--hold", "6", *HTTP, *[a for g in QUALITY for a in ("--dry-run", g)])
        dry_report = last_report(settings)
        assert canary(settings, "set-weight", "10", "-m", "test: again, live").exit_code == 0
        live = canary(settings, "rollout", "--hold", "6", *HTTP)
        live_report = last_report(settings)
    counts = tally(load.answers)
    print(f"\ndry run:\n{dry.output}\nlive:\n{live.output}\nclient answers: {dict(counts)}")
    assert dry.exit_code == 0 and "promoted" in dry.output, dry.output
    assert (
        "dry-run gate max_class_shift failed" in dry.output or "dry-run gate max_confidence_drop failed" in dry.output
    )
    assert "fail (dry-run)" in gate_marks(dry_report, "max_class_shift") + gate_marks(dry_report, "max_confidence_drop")
    http = [g for c in dry_report["checks"] for g in c["gates"] if g["name"] in ("max_error_rate", "max_p99_ms")]
    assert "pass" in {g["status"] for g in http} and "fail" not in {g["status"] for g in http}, http
    assert live.exit_code == 1 and "rolled back" in live.output, live.output
    assert split_of(LocalTarget(settings.state_dir))[0] == 0
    assert {c["step"] for c in live_report["checks"]} == {1}, "rolled back at the first step"
    last = live.output.strip().splitlines()[-1]
    # one line: the gate, its figure with its interval, and the line it crossed
    assert "max_class_shift: class shift" in last or "max_confidence_drop: confidence" in last, last
    assert "above 0.050, with confidence" in last, last
    http = [g for c in live_report["checks"] for g in c["gates"] if g["name"] in ("max_error_rate", "max_p99_ms")]
    assert all(g["status"] != "fail" for g in http), http  # stopped on the model, before some HTTP gates decided
    assert not load.failed(), counts


def test_a_weak_green_with_on_failure_pause_stays_where_it_is(weak_green):
    settings = weak_green.settings
    with rows_load(settings, workers=8) as load:
        load.wait_for(0, 50)
        result = canary(settings, "rollout", "--mode", "fixed", "--hold", "6", *HTTP, "--on-failure", "pause")
        load.wait_for(time.monotonic(), 300)
        shown = canary(settings, "status")
    print(f"\n{result.output}\n{shown.output}")
    assert result.exit_code == 2 and "paused" in result.output, result.output
    assert split_of(LocalTarget(settings.state_dir))[0] == 10
    # status: what each version predicted since the last change, and how far apart
    assert "green predicted" in shown.output and "Chinstrap 0%" in shown.output, shown.output
    divergence = float(shown.output.split("class divergence (JS distance, green vs blue): ")[1].split()[0])
    assert divergence > 0.2, shown.output
    assert not load.failed(), tally(load.answers)


@pytest.mark.parametrize(
    "run", [1, pytest.param(2, marks=pytest.mark.repeat), pytest.param(3, marks=pytest.mark.repeat)]
)
def test_the_next_version_is_promoted_with_every_quality_gate_live(next_green, run):
    settings = next_green.settings
    assert canary(settings, "set-weight", "10", "-m", f"test: run {run}").exit_code == 0
    with rows_load(settings) as load:
        load.wait_for(0, 50)
        result = canary(settings, "rollout", "--hold", "6", *HTTP)
    report = last_report(settings)
    print(f"\nrun {run}:\n{result.output}")
    for name in QUALITY:
        figures = [
            (c["weight"], g["figure"], g["status"]) for c in report["checks"] for g in c["gates"] if g["name"] == name
        ]
        print(f"{name}: {figures}")
    assert result.exit_code == 0 and "promoted" in result.output, result.output
    for name in ("max_class_shift", "max_confidence_drop"):
        assert "pass" in gate_marks(report, name) and "fail" not in gate_marks(report, name), name
    assert not load.failed(), tally(load.answers)


def test_a_split_that_is_not_the_one_set_fails_on_srm(next_green):
    """Every client sends the same user id: the sticky draw puts all of them on one side, whatever the weight."""
    settings = next_green.settings
    assert canary(settings, "set-weight", "25", "-m", "test: srm").exit_code == 0
    with rows_load(settings, workers=8, headers={"X-User-ID": "the-same-user"}) as load:
        load.wait_for(0, 50)
        result = canary(settings, "rollout", "--hold", "4", *HTTP, "--steps", "25,50,100")
    print(f"\n{result.output}")
    assert result.exit_code == 1 and "rolled back" in result.output, result.output
    assert "sample-ratio mismatch" in result.output.strip().splitlines()[-1]
    assert split_of(LocalTarget(settings.state_dir))[0] == 0
    assert not load.failed(), tally(load.answers)


@pytest.mark.parametrize("green", [WEAK, NEXT])
def test_the_shadow_gate_keeps_the_weak_version_out_and_lets_the_next_one_in(more_versions, tmp_path, green):
    with running_stack(tmp_path, green_version=green, green_weight=10) as stack:
        settings = stack.settings
        outcome = {}
        with rows_load(settings, workers=8) as load:
            load.wait_for(0, 50)
            args = [
                "--shadow-seconds",
                "6",
                "--min-agreement",
                "0.9",
                "--hold",
                "3",
                "--steps",
                "10,100",
                *HTTP,
                "--min-rows",
                "20",
            ]
            rolling = threading.Thread(target=lambda: outcome.update(result=canary(settings, "rollout", *args)))
            rolling.start()
            rolling.join(timeout=180)
        result = outcome["result"]
        report = last_report(settings)
    shadow = report["shadow"]
    print(
        f"\n{green}:\n{result.output}\nshadow: agreement {shadow['agreement']}, 95% {shadow['agreement_95']}, "
        f"rows {shadow['rows_compared']}, flips {shadow['flips']}"
    )
    if green == WEAK:
        assert result.exit_code == 1 and "not live" in result.output, result.output
        assert shadow["agreement_95"][0] < 0.9 and shadow["gate"]["status"] == "fail"
        assert shadow["flips"].get("Chinstrap", {}).get("Adelie", 0) > 0  # v1.9.0 cannot tell Chinstraps apart
    else:
        assert result.exit_code == 0 and "promoted" in result.output, result.output
        assert shadow["agreement_95"][0] >= 0.9 and shadow["gate"]["status"] == "pass"
    assert not load.failed(), tally(load.answers)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--max-class-divergence", "-0.1"], "max_class_divergence: threshold must be within [0, 1]"),
        (["--max-confidence-drop", "-1"], "max_confidence_drop: threshold must be within [0, 1]"),
        (["--srm-p-value", "0"], "srm_p_value: threshold must be within (0, 1)"),
        (["--srm-p-value", "1.5"], "srm_p_value: threshold must be within (0, 1)"),
        (["--dry-run", "max_accuracy"], "unknown gate 'max_accuracy'"),
        (["--on-failure", "retry"], "on_failure: Input should be 'rollback' or 'pause'"),
        (["--spec", "SPEC:gates: {max_class_drift: 0.1}"], "max_class_drift: Extra inputs are not permitted"),
        (
            ["--spec", "SPEC:gates: {max_class_divergence: {threshold: 0.1, dry_run: maybe}}"],
            "dry_run: Input should be a valid boolean",
        ),
        (
            ["--spec", "SPEC:gates: {srm_p_value: {threshold: 0.001, mode: live}}"],
            "mode: Extra inputs are not permitted",
        ),
        (["--spec", "SPEC:gates: {max_error_rate: {alpha: 0.7}}"], "alpha: Input should be less than or equal to 0.5"),
        (["--spec", "SPEC:gates: {max_error_rate: {alpha: 0}}"], "alpha: Input should be greater than 0"),
        (["--min-step-seconds", "60", "--max-step-seconds", "30"], "min_step_seconds (60) is above max_step_seconds"),
        (["--mode", "bayesian"], "mode: Input should be 'sequential' or 'fixed'"),
    ],
)
def test_bad_gate_values_are_refused_in_one_line_and_change_nothing(stack, tmp_path, args, message):
    settings = stack.settings
    if args[0] == "--spec":
        spec = tmp_path / "spec.yaml"
        spec.write_text(args[1].removeprefix("SPEC:") + "\n")
        args = ["--spec", str(spec)]
    before = (settings.state_dir / "routing.json").read_bytes()
    refused = canary_process(settings.state_dir, "rollout", *args)
    print(f"\n{args}: exit {refused.returncode}: {refused.stderr.strip()}")
    assert refused.returncode == 1 and message in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert (settings.state_dir / "routing.json").read_bytes() == before
