"""Each gate is declared once (canary_kit/policy/registry.py). A throwaway gate declared the way a new one would be,
with its two judges and its query, is seen in the spec (from YAML, bad values refused in one line), in `canary
rollout --help` and its override, in the report's labels and in the rendered AnalysisTemplate; the registry is as it
was afterwards. And the committed rollout.yaml says what the declarations say."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from canary_kit.cli.app import app
from canary_kit.core.config import Settings
from canary_kit.core.endpoints import DURATION
from canary_kit.core.errors import CanaryError
from canary_kit.k8s import analysis, manifests
from canary_kit.k8s import checks as k8s_checks
from canary_kit.k8s.served import ServedModel
from canary_kit.policy import gates, registry, sequential
from canary_kit.policy.evidence import Figures, GateResult, Step
from canary_kit.policy.registry import GATES, Bounds, GateInfo
from canary_kit.policy.spec import DEFAULT_SPEC, RolloutSpec, default_gate, load_spec
from canary_kit.rollout.report import write_report
from conftest import k8s_served
from test_driver import RECORDED, Clock, Plant, run
from test_gates import window

THROWAWAY = GateInfo(
    "max_p50_ms",
    "green's median latency, in ms",
    "http",
    "p50 ms",
    Bounds(0, 60_000, low_in=False),
    threshold=40.0,
    min_rows=30,
    tolerance=20.0,
    alpha=0.001,
    flag="gate: green's median latency in ms",
    argo="p50-seconds",
)


def fixed_p50(gate, limit: float, green: Figures, w, weight: int) -> gates.Verdict:
    figure = green.p50_ms
    if green.requests < gate.min_rows:
        return "inconclusive", figure, f"only {green.requests} green requests (need {gate.min_rows})"
    return ("fail" if figure > limit else "pass"), figure, f"green p50 {figure:.1f} ms against {limit:g} ms"


def sequential_p50(look: sequential.Look) -> GateResult:
    green = look.window.green or Figures()
    figure = green.p50_ms or 0.0
    enough = green.requests >= look.gate.min_rows
    return look.judge(figure, figure, figure, enough, "green p50", lambda x: f"{x:.1f} ms")


def p50_query(served: ServedModel, spec: RolloutSpec, name: str) -> analysis.Built:
    gate = spec.gates[name]
    assert gate.threshold is not None
    sel = analysis.selector(served, "canary")
    quantile = f"histogram_quantile(0.5, sum by (le) ({analysis.increase(DURATION + '_bucket', sel)}))"
    return f"{quantile}\nand on() ({analysis._green_total(served)} >= {gate.min_rows})", gate.threshold / 1000


@pytest.fixture
def throwaway(monkeypatch):
    """THROWAWAY declared, its judges and its query registered, for one test; all of it gone afterwards."""
    name = THROWAWAY.name
    monkeypatch.setitem(gates.FIXED, name, fixed_p50)
    monkeypatch.setitem(sequential.JUDGES, name, sequential_p50)
    monkeypatch.setitem(analysis.QUERIES, THROWAWAY.argo, analysis.Query(p50_query))
    with registry.declared(THROWAWAY):
        yield THROWAWAY
    assert name not in GATES and name not in load_spec(None, {}).gates.model_dump()
    help_text = CliRunner().invoke(app, ["rollout", "--help"], env={"COLUMNS": "200"}).output
    assert "--max-p50-ms" not in help_text


def test_a_throwaway_gate_is_in_the_spec_with_its_defaults_and_bounds(throwaway, tmp_path):
    default = load_spec(None, {})
    assert default.gates["max_p50_ms"].model_dump() == {
        "threshold": 40.0,
        "min_rows": 30,
        "dry_run": False,
        "alpha": 0.001,
        "tolerance": 20.0,
    }
    assert list(default.gates.model_dump())[-1] == "max_p50_ms", "after the gates declared before it"
    assert default.family_alpha() == pytest.approx(0.011), "its alpha counts in the family"
    path = tmp_path / "spec.yaml"
    path.write_text("gates: {max_p50_ms: {threshold: 25, min_rows: 10}}\n")
    given = load_spec(path, {"min_requests": 12})
    assert (given.gates["max_p50_ms"].threshold, given.gates["max_p50_ms"].min_rows) == (25, 12), "an HTTP gate"
    for text, message in (
        ("gates: {max_p50_ms: 0}", "gates.max_p50_ms: threshold must be within (0, 60000], got 0"),
        ("gates: {max_p50_ms: {alpha: 0}}", "gates.max_p50_ms.alpha: Input should be greater than 0"),
        ("gates: {max_p50_ms: {thresold: 3}}", "gates.max_p50_ms.thresold: Extra inputs are not permitted"),
    ):
        path.write_text(text + "\n")
        with pytest.raises(CanaryError) as refused:
            load_spec(path, {})
        print(refused.value)
        assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_throwaway_gate_is_judged_in_both_modes(throwaway):
    fixed = gates.decide(load_spec(None, {"mode": "fixed"}), Step(1, 10), window("healthy"))
    found = {g.name: g for g in fixed.gates}["max_p50_ms"]
    assert (found.status, found.figure) == ("pass", 2.62), found
    failing = gates.decide(load_spec(None, {"mode": "fixed", "max_p50_ms": 1}), Step(1, 10), window("healthy"))
    assert failing.outcome == "fail" and failing.reason.startswith("green p50 2.6 ms against 1 ms"), failing.reason
    looks = sequential.judge_sequential(load_spec(None, {}), Step(1, 10), window("healthy"))
    assert {g.name: g.status for g in looks}["max_p50_ms"] == "pass"


def test_a_throwaway_gate_has_an_option_of_canary_rollout(throwaway, tmp_path, monkeypatch):
    from canary_kit.policy import spec as spec_module

    result = CliRunner().invoke(app, ["rollout", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    line = next(line for line in result.output.splitlines() if "--max-p50-ms" in line)
    print(line)
    assert "FLOAT" in line.upper() and "gate: green's median latency in ms" in line
    refused = CliRunner().invoke(app, ["rollout", "--state-dir", str(tmp_path), "--max-p50-ms", "0"])
    print(refused.output)
    assert refused.exit_code == 1 and "gates.max_p50_ms: threshold must be within (0, 60000], got 0" in refused.output
    # A value in range reaches the spec: the real load_spec, then stop before any stack is opened.
    loaded: list[RolloutSpec] = []

    def load_then_stop(path, overrides):
        loaded.append(load_spec(path, overrides))
        raise CanaryError("stopped after the spec")

    monkeypatch.setattr(spec_module, "load_spec", load_then_stop)
    args = ["rollout", "--state-dir", str(tmp_path), "--max-p50-ms", "25", "--dry-run", "max_p50_ms"]
    stopped = CliRunner().invoke(app, args)
    assert stopped.exit_code == 1 and "stopped after the spec" in stopped.output, stopped.output
    assert loaded[0].gates["max_p50_ms"].threshold == 25 and loaded[0].gates["max_p50_ms"].dry_run
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_a_throwaway_gate_is_in_the_report_with_its_label(throwaway, tmp_path):
    clock = Clock()
    plan = load_spec(None, {"max_p99_ms": 10000})
    result = run(plan, Plant(clock, RECORDED["healthy"]["green"], RECORDED["healthy"]["blue"]), clock)
    assert result.outcome == "promoted" and any(g["name"] == "max_p50_ms" for g in result.checks[0].gates)
    markdown = write_report(result, tmp_path).read_text()
    chart = next(p for p in tmp_path.glob("rollout-*.svg") if not p.name.endswith("-evidence.svg")).read_text()
    evidence = next(tmp_path.glob("rollout-*-evidence.svg")).read_text()
    assert "max_p50_ms 2.62" in markdown
    assert ">p50 ms</text>" in chart and ">p50 ms</text>" in evidence


def test_a_throwaway_gate_is_in_the_rendered_analysis_template(throwaway, tmp_path):
    spec = load_spec(None, {"dry_run": ["max_p50_ms"]})
    manifests.render(k8s_served(), spec, tmp_path, "spec.yaml")
    rendered = list(yaml.safe_load_all((tmp_path / "analysistemplate.yaml").read_text()))
    template = next(d for d in rendered if d["metadata"]["name"].endswith("-gates"))
    metrics = {m["name"]: m for m in template["spec"]["metrics"]}
    print(yaml.safe_dump(metrics["p50-seconds"]))
    assert (
        list(metrics)[-1] == "p50-seconds"
        and "histogram_quantile(0.5" in metrics["p50-seconds"]["provider"]["prometheus"]["query"]
    )
    assert metrics["p50-seconds"]["successCondition"] == "len(result) == 1 && result[0] <= 0.04"
    assert {"metricName": "p50-seconds"} in template["spec"]["dryRun"]
    docs = [d for t in manifests.manifests(k8s_served(), spec).values() for d in yaml.safe_load_all(t)]
    exported = k8s_checks.exports(Settings().prediction_metrics)
    assert k8s_checks.problems([d for d in docs if d["kind"] != "Kustomization"], exported) == []
    (tmp_path / "off.yaml").write_text("gates: {max_p50_ms: null}\n")
    off = load_spec(tmp_path / "off.yaml", {})
    assert "p50-seconds" not in analysis.queries(k8s_served(), off), "a gate turned off is not rendered"


def test_the_committed_rollout_yaml_says_what_the_declarations_say():
    """rollout.yaml writes the defaults out for people to read; each value it gives is its gate's declared one."""
    given = yaml.safe_load(DEFAULT_SPEC.read_text())["gates"]
    assert set(given) <= set(GATES), set(given) - set(GATES)
    differ = {
        (name, key): (value, getattr(default_gate(name), key))
        for name, values in given.items()
        for key, value in values.items()
        if getattr(default_gate(name), key) != value
    }
    assert differ == {}, differ
    assert load_spec(None, {}).gates.model_dump() == {name: default_gate(name).model_dump() for name in GATES}


def test_every_declared_mode_has_its_judge_and_every_judge_its_declaration():
    for name, info in GATES.items():
        if info.kind == "shadow":  # judged apart: gates.judge_shadow, sequential.judge_agreement
            assert name not in gates.FIXED and name not in sequential.JUDGES
            continue
        assert (name in gates.FIXED) == ("fixed" in info.modes), name
        assert (name in sequential.JUDGES) == ("sequential" in info.modes), name
        assert info.argo is None or info.argo in analysis.QUERIES, name
    assert set(gates.FIXED) | set(sequential.JUDGES) <= set(GATES)
    with pytest.raises(ValueError, match="declared twice"):
        registry.declare(GATES["max_error_rate"])
    with pytest.raises(ValueError, match="kind must be one of"):
        registry.declare(GateInfo("x", "x", "nonsense", "x", Bounds(0, 1), None, 1))
