"""deploy/k8s: generated from the rollout spec, rendered offline by `kubectl kustomize`, validated against the
Kubernetes schemas (core kinds with kubernetes-validate, the CRDs with the copies in tests/k8s_schemas/, unknown
fields as errors) and checked for what schemas miss. Seeded errors are refused with a message naming them."""

from __future__ import annotations

import copy
import json
import re
import shutil
from functools import lru_cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft7Validator
from typer.testing import CliRunner

from canary_kit.cli.app import app
from canary_kit.core.config import Settings
from canary_kit.core.errors import CanaryError
from canary_kit.k8s import checks as k8s_checks
from canary_kit.k8s import manifests
from canary_kit.k8s.served import ServedModel
from canary_kit.policy.spec import load_spec
from canary_kit.policy.stats import chi2_critical
from conftest import ROOT
from conftest import k8s_served as served

BASE = ROOT / "deploy" / "k8s"
SCHEMAS = Path(__file__).with_name("k8s_schemas")
CRDS = {
    ("argoproj.io/v1alpha1", "Rollout"): "argoproj.io_rollout_v1alpha1.json",
    ("argoproj.io/v1alpha1", "AnalysisTemplate"): "argoproj.io_analysistemplate_v1alpha1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "gateway.networking.k8s.io_httproute_v1.json",
}
CORE = {("v1", "Service")}
K8S_VERSION = "1.32.0"  # the kubectl on these machines
EXPORTS = k8s_checks.exports(Settings().prediction_metrics)  # BentoML's series and the model's, from [tool.canary]
needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed: deploy/k8s cannot be rendered offline here"
)


def _strict(node):
    """The API server prunes unknown fields; offline, make them errors (see tests/k8s_schemas/README.md)."""
    if isinstance(node, dict):
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)
    return node


@lru_cache
def crd_validator(name: str) -> Draft7Validator:
    schema = _strict(json.loads((SCHEMAS / name).read_text()))
    schema["properties"].update(
        {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
    )
    return Draft7Validator(schema)


def validate(doc: dict) -> list[str]:
    """Schema problems of one manifest; a kind that no schema covers is a problem too (nothing goes unchecked)."""
    key, name = (doc.get("apiVersion"), doc.get("kind")), f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
    if key in CRDS:
        errors = sorted(crd_validator(CRDS[key]).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        return [f"{name}: {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]
    if key in CORE:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            return [f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}"]
        return []
    return [f"{name}: no schema checks kind {key[1]} ({key[0]}); add one to the tests before shipping it"]


def argo_rollout_of(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "Rollout")


def as_deployment(argo_rollout: dict) -> dict:
    """The Argo Rollout's pod template as the core kind it is, so kubernetes-validate checks it too."""
    spec = argo_rollout["spec"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": argo_rollout["metadata"],
        "spec": {"replicas": spec["replicas"], "selector": spec["selector"], "template": spec["template"]},
    }


def render(folder: Path) -> list[dict]:
    return k8s_checks.kustomize(folder)


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: deploy/k8s cannot be rendered offline here")
    return render(BASE)


def test_committed_base_is_what_the_generator_writes(tmp_path):
    manifests.render(served(), load_spec(None, {}), tmp_path, "canary_kit/rollout.yaml")
    again = tmp_path / "again"
    manifests.render(served(), load_spec(None, {}), again, "canary_kit/rollout.yaml")
    assert sorted(p.name for p in BASE.iterdir()) == sorted(manifests.FILES), (
        "deploy/k8s holds files the generator does not write"
    )
    for name in manifests.FILES:
        assert (tmp_path / name).read_text() == (again / name).read_text(), f"{name} differs between two renders"
        assert (BASE / name).read_text() == (tmp_path / name).read_text(), (
            f"deploy/k8s/{name} is stale: run `canary k8s render`"
        )


@needs_kubectl
def test_every_rendered_kind_is_validated_and_passes(rendered):
    kinds = sorted({d["kind"] for d in rendered})
    print(f"\nrendered: {len(rendered)} resources, kinds {kinds}")
    assert kinds == ["AnalysisTemplate", "HTTPRoute", "Rollout", "Service"]
    problems = [p for doc in rendered for p in validate(doc)]
    try:
        kubernetes_validate.validate(as_deployment(argo_rollout_of(rendered)), K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        problems.append(f"Rollout pod template: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert problems == []


def test_a_kind_without_schema_goes_not_unchecked():
    problems = validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}})
    assert problems and "no schema checks kind ConfigMap" in problems[0]


@needs_kubectl
def test_semantic_checks_pass_and_image_tag_is_set(rendered):
    assert k8s_checks.problems(rendered, EXPORTS) == []
    container = argo_rollout_of(rendered)["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "penguin_classifier:v1.1.0"
    # kubectl apply creates them in this order: the pins route is the older one and wins ties (never wins).
    assert [d["metadata"]["name"] for d in rendered if d["kind"] == "HTTPRoute"] == [
        "penguin-classifier-pins",
        "penguin-classifier-split",
    ]


def test_steps_gates_and_pins_follow_the_spec(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "steps: [5, 50, 100]\nhold_seconds: 12.5\nmax_inconclusive: 4\nmax_failed_checks: 3\n"
        "gates: {max_error_rate: {threshold: 0.02, min_rows: 20}, max_p99_ms: {threshold: 200, min_rows: 21},\n"
        "        max_p99_ratio: {threshold: 2.5, min_rows: 22}, srm_p_value: {threshold: 0.01, min_rows: 300},\n"
        "        max_class_divergence: {threshold: 0.2, min_rows: 150},\n"
        "        max_confidence_drop: {threshold: 0.05, min_rows: 160}}\n"
    )
    spec = load_spec(spec_file, {})
    files = manifests.manifests(served(image_tag="v1.2.0"), spec)
    canary = yaml.safe_load(files["argo-rollout.yaml"])["spec"]["strategy"]["canary"]
    hold = {"pause": {"duration": "12500ms"}}
    routes = [s for s in canary["steps"] if "setHeaderRoute" in s]
    judged = [s["analysis"] for s in canary["steps"] if "analysis" in s]
    assert canary["steps"] == [
        {"setWeight": 5},
        *routes,
        hold,
        {"analysis": judged[0]},
        {"setWeight": 50},
        hold,
        {"analysis": judged[1]},
        {"setWeight": 100},
        hold,
    ]  # no split to test at 100%
    for analysis, weight in zip(judged, ("5", "50")):
        assert analysis["templates"] == [{"templateName": "penguin-classifier-split"}]
        args = {a["name"]: a for a in analysis["args"]}
        assert args["weight"] == {"name": "weight", "value": weight}
        assert args["canary-hash"]["valueFrom"] == {"podTemplateHashValue": "Latest"}
    assert [r["setHeaderRoute"]["name"] for r in routes] == [
        m["name"] for m in canary["trafficRouting"]["managedRoutes"]
    ]
    assert [r["setHeaderRoute"]["match"] for r in routes] == [
        [{"headerName": "X-Canary", "headerValue": {"exact": "always"}}],
        [{"headerName": "Cookie", "headerValue": {"regex": manifests.cookie_regex("always")}}],
    ]
    gates, split = list(yaml.safe_load_all(files["analysistemplate.yaml"]))
    metrics = {m["name"]: m for m in gates["spec"]["metrics"]}
    assert list(metrics) == ["error-rate", "p99-seconds", "p99-ratio", "class-divergence", "confidence-drop"]
    for metric in metrics.values():
        assert (metric["interval"], metric["initialDelay"]) == ("12500ms", "12500ms")
        assert (metric["failureLimit"], metric["inconclusiveLimit"]) == (2, 3)
    query = {name: m["provider"]["prometheus"]["query"] for name, m in metrics.items()}
    assert ">= 20)" in query["error-rate"] and "clamp_min(" in query["error-rate"] and ", 20)" in query["error-rate"]
    assert ">= 21)" in query["p99-seconds"] and ">= 22)" in query["p99-ratio"]  # each HTTP gate's min_rows
    assert query["class-divergence"].count(">= 150)") == 2 and query["confidence-drop"].count(">= 160)") == 2
    assert "penguin_predicted_class_total{" in query["class-divergence"]  # the names in [tool.canary]
    assert "penguin_prediction_confidence_sum{" in query["confidence-drop"]
    assert metrics["error-rate"]["failureCondition"].endswith("result[0] > 0.02")
    assert metrics["p99-seconds"]["failureCondition"].endswith("result[0] > 0.2")
    assert metrics["p99-ratio"]["failureCondition"].endswith("result[0] > 2.5")
    assert metrics["class-divergence"]["failureCondition"].endswith("result[0] > 0.2")
    assert metrics["confidence-drop"]["failureCondition"].endswith("result[0] > 0.05")
    assert {"name": "window", "value": "12500ms"} in gates["spec"]["args"] and "dryRun" not in gates["spec"]
    (srm,) = split["spec"]["metrics"]
    assert split["metadata"]["name"] == "penguin-classifier-split" and srm["name"] == "sample-ratio"
    assert srm["failureCondition"] == f"len(result) == 1 && result[0] > {chi2_critical(0.01):g}"  # 6.6349
    assert (srm["interval"], srm["count"], srm["consecutiveSuccessLimit"]) == ("12500ms", 4 + 3 - 1, 1)
    assert "initialDelay" not in srm and ">= 300)" in srm["provider"]["prometheus"]["query"]
    assert "{{args.weight}}" in srm["provider"]["prometheus"]["query"] and {"name": "weight"} in split["spec"]["args"]
    assert yaml.safe_load(files["kustomization.yaml"])["images"] == [{"name": "penguin_classifier", "newTag": "v1.2.0"}]
    assert "/livez" in files["argo-rollout.yaml"] and "/readyz" in files["argo-rollout.yaml"]
    assert [
        p
        for text in files.values()
        for d in yaml.safe_load_all(text)
        if d["kind"] != "Kustomization"
        for p in validate(d)
    ] == []


def docs_of(spec, given: ServedModel | None = None) -> list[dict]:
    texts = manifests.manifests(given or served(), spec).values()
    return [d for text in texts for d in yaml.safe_load_all(text) if d["kind"] != "Kustomization"]


def test_dry_run_gates_are_argo_dry_run_metrics_and_validate(tmp_path):
    spec = load_spec(None, {"dry_run": ["max_class_divergence", "max_confidence_drop", "srm_p_value"]})
    docs = docs_of(spec)
    gates, split = (d for d in docs if d["kind"] == "AnalysisTemplate")
    print(f"\ndryRun: {gates['spec']['dryRun']} {split['spec']['dryRun']}")
    assert gates["spec"]["dryRun"] == [{"metricName": "class-divergence"}, {"metricName": "confidence-drop"}]
    assert split["spec"]["dryRun"] == [{"metricName": "sample-ratio"}]
    assert [p for d in docs for p in validate(d)] == [] and k8s_checks.problems(docs, EXPORTS) == []
    gates["spec"]["dryRun"].append({"metricName": "class-divergense"})
    assert "dryRun names metric 'class-divergense'" in " ".join(k8s_checks.problems(docs, EXPORTS))
    # The committed spec's base has no dry run.
    assert "dryRun" not in (BASE / "analysistemplate.yaml").read_text()


def test_on_failure_pause_makes_a_breach_inconclusive_and_says_so(tmp_path):
    spec = load_spec(None, {"on_failure": "pause", "max_inconclusive": 3, "max_failed_checks": 2})
    docs = docs_of(spec)
    assert [p for d in docs for p in validate(d)] == [] and k8s_checks.problems(docs, EXPORTS) == []
    for template in (d for d in docs if d["kind"] == "AnalysisTemplate"):
        for metric in template["spec"]["metrics"]:
            assert metric["failureCondition"] == "false" and metric["inconclusiveLimit"] == 1, metric["name"]
            assert k8s_checks.verdict(metric, [1e9]) == "Inconclusive"  # the Argo Rollout pauses, split kept
            assert (
                k8s_checks.verdict(metric, []) == "Inconclusive" and k8s_checks.verdict(metric, [0.0]) == "Successful"
            )
    manifests.render(served(), spec, tmp_path, "spec.yaml")
    for name in ("argo-rollout.yaml", "analysistemplate.yaml"):
        assert "on_failure: pause" in (tmp_path / name).read_text(), name
    assert "on_failure" not in (BASE / "argo-rollout.yaml").read_text()


def test_gates_turned_off_or_unknown_to_the_service_are_not_rendered(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("gates: {srm_p_value: null, max_p99_ratio: null}\n")
    docs = docs_of(load_spec(spec_file, {}), served().model_copy(update={"class_metric": None}))
    (gates,) = (d for d in docs if d["kind"] == "AnalysisTemplate")  # no split template
    assert [m["name"] for m in gates["spec"]["metrics"]] == ["error-rate", "p99-seconds", "confidence-drop"]
    assert not any("analysis" in s for s in argo_rollout_of(docs)["spec"]["strategy"]["canary"]["steps"])
    assert k8s_checks.problems(docs, EXPORTS) == [] and [p for d in docs for p in validate(d)] == []
    # A service exporting no prediction metrics: a base querying them is refused by the checks.
    assert "is not exported by the backends" in " ".join(k8s_checks.problems(docs_of(load_spec(None, {}))))


@pytest.mark.parametrize(
    "cookie,pinned",
    [
        ("canary=always", "always"),
        ("a=1; canary=always", "always"),
        ("canary=always;b=2", "always"),
        ("canary=never", "never"),
        ("x=2;  canary=never ; y=3", "never"),
        ("notcanary=always", None),
        ("canary=alwaysx", None),
        ("canary=sometimes", None),
    ],
)
def test_cookie_pins_match_as_full_and_as_partial_regex(cookie, pinned):
    for value in ("always", "never"):
        regex = manifests.cookie_regex(value)
        expected = pinned == value
        assert bool(re.fullmatch(regex, cookie)) is expected and bool(re.search(regex, cookie)) is expected


def test_an_empty_answer_is_inconclusive_and_thresholds_decide_the_rest():
    gates, split = yaml.safe_load_all(manifests.manifests(served(), load_spec(None, {}))["analysistemplate.yaml"])
    for metric in gates["spec"]["metrics"] + split["spec"]["metrics"]:
        assert k8s_checks.verdict(metric, []) == "Inconclusive", metric["name"]
    error_rate = gates["spec"]["metrics"][0]
    assert k8s_checks.verdict(error_rate, [0.0]) == "Successful"
    assert k8s_checks.verdict(error_rate, [0.5]) == "Failed"
    only_success = {"name": "x", "successCondition": "result[0] <= 1"}
    with pytest.raises(CanaryError, match="fails on"):
        k8s_checks.verdict(only_success, [])
    with pytest.raises(CanaryError, match="beyond what this check reads"):
        k8s_checks.verdict({"name": "x", "successCondition": "__import__('os')"}, [1.0])


# --- seeded errors: each refused, naming the problem ------------------------------------------------------------


def seeded(tmp_path: Path, file: str, old: str, new: str) -> Path:
    folder = tmp_path / "k8s"
    shutil.copytree(BASE, folder)
    text = (folder / file).read_text()
    assert old in text, f"{old!r} is not in {file}"
    (folder / file).write_text(text.replace(old, new, 1))
    return folder


def seeds(*cases: tuple[str, str, str, str]):
    """A test run once per seeded error on a copy of the committed base: (file, old text, new text, the message
    expected), rendered with kubectl."""
    return lambda test: needs_kubectl(pytest.mark.parametrize("file,old,new,message", cases)(test))


@seeds(
    ("argo-rollout.yaml", "canaryService:", "canarySevice:", "'canarySevice' was unexpected"),
    ("httproutes.yaml", "backendRefs:", "backendRef:", "'backendRef' was unexpected"),
    ("analysistemplate.yaml", "successCondition:", "sucessCondition:", "'sucessCondition' was unexpected"),
    ("httproutes.yaml", "type: Exact", "type: Exactly", "'Exactly' is not one of"),
)
def test_a_misspelt_field_is_refused_by_the_schemas(tmp_path, file, old, new, message):
    problems = [p for doc in render(seeded(tmp_path, file, old, new)) for p in validate(doc)]
    print(f"\n{problems}")
    assert any(message in p for p in problems), problems


@seeds(
    ("argo-rollout.yaml", "setWeight: 50", "setWeight: 150", "steps[8].setWeight: 150 is outside 0-100"),
    ("argo-rollout.yaml", "setWeight: 50", "setWeight: 20", "setWeight: 20 does not rise above the previous step's 25"),
    (
        "services.yaml",
        "name: penguin-classifier-canary",
        "name: penguin-classifier-canery",
        "canaryService 'penguin-classifier-canary' is not a Service of this base",
    ),
    (
        "analysistemplate.yaml",
        "bentoml_service_request_duration_seconds_bucket",
        "bentoml_request_latency_bucket",
        "series 'bentoml_request_latency_bucket' is not exported by the backends",
    ),
    (
        "analysistemplate.yaml",
        "penguin_predicted_class_total{",
        "penguin_predicted_classes_total{",
        "series 'penguin_predicted_classes_total' is not exported by the backends",
    ),
    (
        "analysistemplate.yaml",
        "penguin_prediction_confidence_sum{",
        'penguin_prediction_confidence_sum{endpoint="/predict",',
        "label 'endpoint' is not on penguin_prediction_confidence_sum",
    ),
    (
        "analysistemplate.yaml",
        "sum by (class)",
        "sum by (klass)",
        "grouping label 'klass' is on none of the selected series",
    ),
    (
        "argo-rollout.yaml",
        "value: '25'",
        "value: '30'",
        "steps[7].analysis: arg weight is '30', not the weight its step set (25)",
    ),
    (
        "argo-rollout.yaml",
        "templateName: penguin-classifier-split",
        "templateName: split",
        "steps[4].analysis: templateName 'split' is not an AnalysisTemplate",
    ),
    (
        "argo-rollout.yaml",
        "          - name: weight\n            value: '10'\n",
        "",
        "arg 'weight' has no value and the Rollout does not supply it",
    ),
    (
        "analysistemplate.yaml",
        'endpoint="/predict"',
        'path="/predict"',
        "label 'path' is not on bentoml_service_request_total",
    ),
    ("analysistemplate.yaml", 'endpoint="/predict"', 'endpoint="/readyz"', "so probes never count"),
    (
        "argo-rollout.yaml",
        "- name: canary-cookie",
        "- name: canary-cookies",
        "route 'canary-cookie' is not in managedRoutes",
    ),
    ("httproutes.yaml", "name: never-cookie", "name: never-header", "rule names are not unique"),
    (
        "argo-rollout.yaml",
        "templateName: penguin-classifier-gates",
        "templateName: gates",
        "templateName 'gates' is not an AnalysisTemplate",
    ),
    ("argo-rollout.yaml", "- name: penguin-classifier-split", "- name: split", "httpRoute 'split' is not an HTTPRoute"),
    (
        "analysistemplate.yaml",
        "{{args.stable-hash}}",
        "{{args.blue-hash}}",
        "uses {{args.blue-hash}}, which the template does not declare",
    ),
    (
        "analysistemplate.yaml",
        "    failureCondition: len(result) == 1 && result[0] > 0.01\n",
        "",
        "an empty answer (too little traffic) would be Failed, not Inconclusive",
    ),
    ("services.yaml", "targetPort: http", "targetPort: web", "targetPort 'web' is not a container port"),
    ("argo-rollout.yaml", "startingStep: 1", "startingStep: 13", "analysis.startingStep 13 is not a step (0-12)"),
    ("httproutes.yaml", "  - name: gateway", "  - name: Bad_Gateway!", "parentRef 'Bad_Gateway!' is not a valid"),
    (
        "services.yaml",
        "name: penguin-classifier-canary",
        "name: penguin.classifier-canary",
        "a Service name must be a DNS label",
    ),
    (
        "analysistemplate.yaml",
        "address: http://prometheus.monitoring.svc:9090",
        "address: prometheus:9090",
        "Prometheus address 'prometheus:9090' is not an http(s) URL",
    ),
)
def test_what_schemas_miss_is_refused_by_the_checks(tmp_path, file, old, new, message):
    docs = render(seeded(tmp_path, file, old, new))
    problems = k8s_checks.problems(docs, EXPORTS)
    print(f"\n{problems}")
    assert any(message in p for p in problems), problems


@needs_kubectl
def test_canary_k8s_check_refuses_in_one_line_and_passes_the_committed_base(tmp_path):
    ok = CliRunner().invoke(app, ["k8s", "check", str(BASE)])
    assert ok.exit_code == 0 and "no problem found" in ok.output, ok.output
    folder = seeded(tmp_path, "argo-rollout.yaml", "setWeight: 50", "setWeight: 150")
    assert [p for doc in render(folder) for p in validate(doc)] == []  # the schemas let it through
    bad = CliRunner().invoke(app, ["k8s", "check", str(folder)])
    assert bad.exit_code == 1 and "setWeight: 150 is outside 0-100" in bad.output
    assert len(bad.output.strip().splitlines()) == 1, bad.output


def test_canary_k8s_render_writes_the_base_and_refuses_bad_values(tmp_path):
    out = tmp_path / "out"
    done = CliRunner().invoke(app, ["k8s", "render", "--out", str(out), "--image-tag", "v1.2.0"])
    assert done.exit_code == 0, done.output
    assert "newTag: v1.2.0" in (out / "kustomization.yaml").read_text()
    spec = tmp_path / "spec.yaml"
    spec.write_text("steps: [10, 150]\n")
    for args in (
        ["--spec", str(spec)],
        ["--image-tag", "v1 2"],
        ["--gateway", "Bad_Name!"],
        ["--gateway", "gateway\n"],
        ["--prometheus", "x y"],
    ):
        bad = CliRunner().invoke(app, ["k8s", "render", "--out", str(tmp_path / "x"), *args])
        assert bad.exit_code == 1 and bad.output.startswith("error: ") and len(bad.output.strip().splitlines()) == 1


def test_checks_refuse_a_base_without_rollout_or_with_holes():
    assert k8s_checks.problems([]) == ["the base must hold exactly one Rollout, found 0"]
    docs = docs_of(load_spec(None, {}))
    assert k8s_checks.problems(docs, EXPORTS) == []
    broken = copy.deepcopy(docs)
    del argo_rollout_of(broken)["spec"]["template"]["spec"]["containers"]
    assert "a required field is missing" in k8s_checks.problems(broken, EXPORTS)[0]
