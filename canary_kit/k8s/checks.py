"""What schemas miss in the rendered Kubernetes base: the meaning of the Argo Rollout, its routes and its gates.

    canary k8s check deploy/k8s    # renders with `kubectl kustomize`, then these checks; one line per problem

Each check returns problems as sentences naming the resource and the field; none means the base is coherent:
weights rise to at most 100, rule and metric names are unique, every header route a step sets is a managed route
the plugin may add, every name (Services, routes, templates, args, ports, dry-run metrics) resolves, every step
analysis is told the weight its step set, and the gates query only series and labels that the backends export
(BentoML's own, and the model's prediction metrics named in [tool.canary]), each with both conditions so that an
empty answer is Inconclusive.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from canary_kit.core.endpoints import DURATION, REQUESTS, PredictionMetrics
from canary_kit.core.errors import CanaryError
from canary_kit.k8s.served import ARGS, PLUGIN, SCRAPE_LABELS, is_http_url, is_name, is_service_name

# What `bentoml serve` exports (BentoML 1.4, checked against a live /metrics by the tests): series -> labels.
_COMMON = {"endpoint", "http_response_code", "runner_name", "service_name", "service_version"}
EXPORTED: dict[str, set[str]] = {
    f"{REQUESTS}_total": _COMMON,
    f"{DURATION}_bucket": _COMMON | {"le"},
    f"{DURATION}_count": _COMMON,
    f"{DURATION}_sum": _COMMON,
    "bentoml_service_request_in_progress": {"endpoint", "runner_name", "service_name", "service_version"},
}


def exports(names: PredictionMetrics | None = None) -> dict[str, set[str]]:
    """What a backend exports: BentoML's series, and the service's prediction metrics when it names them."""
    found = {series: set(labels) for series, labels in EXPORTED.items()}
    if names is not None and names.class_metric:
        found[f"{names.class_metric}_total"] = {"class"}
    if names is not None and names.confidence_metric:
        found.update({f"{names.confidence_metric}_{part}": set() for part in ("count", "sum")})
        found[f"{names.confidence_metric}_bucket"] = {"le"}
    if names is not None and names.value_metric:
        found.update({f"{names.value_metric}_{part}": set() for part in ("count", "sum")})
        found[f"{names.value_metric}_bucket"] = {"le"}
    return found


PROBES = {"/livez", "/readyz", "/healthz", "/metrics"}
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^{}]*(?:\{\{[^}]*\}\}[^{}]*)*)\}")
MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
ARG = re.compile(r"\{\{\s*args\.([\w-]+)\s*\}\}")
CONDITION = re.compile(r"^[\s\w\[\]().<>=!&|+\-*/]*$")


def exported_from(text: str) -> dict[str, set[str]]:
    """Series -> label names in a Prometheus exposition text (a live /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def verdict(metric: dict, result: list[float]) -> str:
    """Argo's EvaluateResult for a Prometheus vector answer: Failed, Inconclusive or Successful."""

    def holds(condition: str) -> bool:
        words = {"len", "result", "isNaN", "true", "false"}
        if not CONDITION.match(condition) or set(re.findall(r"[A-Za-z_]\w*", condition)) - words:
            raise CanaryError(f"metric {metric.get('name')}: condition {condition!r} is beyond what this check reads")
        python = condition.replace("&&", " and ").replace("||", " or ")
        python = re.sub(r"!(?!=)", " not ", python)
        try:
            names = {"len": len, "result": result, "isNaN": math.isnan, "true": True, "false": False}
            return bool(eval(python, {"__builtins__": {}}, names))  # the tokens were checked above
        except IndexError as exc:  # Argo: an evaluation error is an Error phase
            raise CanaryError(f"metric {metric.get('name')}: {condition!r} fails on {result}: {exc}") from None

    success, failure = metric.get("successCondition"), metric.get("failureCondition")
    passed = holds(success) if success else None
    failed = holds(failure) if failure else None
    if passed is None and failed is None:
        return "Successful"
    if failed is None:
        failed = not passed
    if passed is None:
        passed = not failed
    return "Failed" if failed else ("Successful" if passed else "Inconclusive")


def _kinds(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def check_names(docs: list[dict]) -> list[str]:
    """Every object's name, and every Gateway a route attaches to, is a valid Kubernetes name."""
    problems = []
    for doc in docs:
        name = doc["metadata"]["name"]
        parents = doc.get("spec", {}).get("parentRefs") or [] if doc["kind"] == "HTTPRoute" else []
        refs = [ref.get("name") for ref in parents]
        for given, what in [(name, "name"), *((ref, "parentRef") for ref in refs)]:
            if not is_name(given):
                problems.append(f"{doc['kind']} {name}: {what} {given!r} is not a valid Kubernetes name")
        if doc["kind"] == "Service" and not is_service_name(name):
            problems.append(f"Service {name}: a Service name must be a DNS label (a-z, 0-9, '-', at most 63)")
    return problems


def check_steps(argo_rollout: dict) -> list[str]:
    canary = argo_rollout["spec"]["strategy"].get("canary") or {}
    name, problems, last = argo_rollout["metadata"]["name"], [], -1
    managed = [r.get("name") for r in (canary.get("trafficRouting") or {}).get("managedRoutes") or []]
    if len(set(managed)) != len(managed):
        problems.append(f"Rollout {name}: managedRoutes has a name twice: {managed}")
    for index, step in enumerate(canary.get("steps") or []):
        where = f"Rollout {name}: steps[{index}]"
        if "setWeight" in step:
            weight = step["setWeight"]
            if not 0 <= weight <= 100:
                problems.append(f"{where}.setWeight: {weight} is outside 0-100")
            elif weight <= last:
                problems.append(f"{where}.setWeight: {weight} does not rise above the previous step's {last}")
            last = weight
        route = step.get("setHeaderRoute")
        if route and route.get("name") not in managed:
            problems.append(f"{where}.setHeaderRoute: route {route.get('name')!r} is not in managedRoutes {managed}")
    if last != 100:
        problems.append(f"Rollout {name}: the last setWeight is {last}, not 100: promotion would jump from there")
    return problems


def check_routes(argo_rollout: dict, docs: list[dict]) -> list[str]:
    canary = argo_rollout["spec"]["strategy"].get("canary") or {}
    name, problems = argo_rollout["metadata"]["name"], []
    services, routes = _kinds(docs, "Service"), _kinds(docs, "HTTPRoute")
    pod = argo_rollout["spec"]["template"]
    labels = pod["metadata"].get("labels") or {}
    ports = {p.get("name"): p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or []}
    for role in ("canaryService", "stableService"):
        if canary.get(role) not in services:
            problems.append(f"Rollout {name}: {role} {canary.get(role)!r} is not a Service of this base")
    for svc_name, svc in services.items():
        selector = svc["spec"].get("selector") or {}
        if any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"Service {svc_name}: selector {selector} does not select the Rollout's pods {labels}")
        for port in svc["spec"].get("ports") or []:
            target = port.get("targetPort", port["port"])
            if target not in ports and target not in ports.values():
                problems.append(f"Service {svc_name}: targetPort {target!r} is not a container port {ports}")
    plugin = ((canary.get("trafficRouting") or {}).get("plugins") or {}).get(PLUGIN)
    if not plugin or not plugin.get("httpRoutes"):
        return problems + [f"Rollout {name}: trafficRouting.plugins has no {PLUGIN} httpRoutes"]
    managed = {r["name"] for r in canary["trafficRouting"].get("managedRoutes") or []}
    managed_names = {r["name"] for r in plugin["httpRoutes"]}
    header_steps = any("setHeaderRoute" in s for s in canary.get("steps") or [])
    for ref in plugin["httpRoutes"]:
        route = routes.get(ref["name"])
        if route is None:
            problems.append(f"Rollout {name}: the plugin's httpRoute {ref['name']!r} is not an HTTPRoute of this base")
            continue
        if header_steps and not ref.get("useHeaderRoutes"):
            problems.append(f"Rollout {name}: httpRoute {ref['name']!r} needs useHeaderRoutes: true for setHeaderRoute")
        backends = [{b["name"] for b in rule.get("backendRefs") or []} for rule in route["spec"]["rules"]]
        if not any({canary.get("canaryService"), canary.get("stableService")} <= b for b in backends):
            problems.append(f"HTTPRoute {ref['name']}: no rule refers to both the stable and the canary Service")
        clash = [r.get("name") for r in route["spec"]["rules"] if r.get("name") and _managed_name(r["name"], managed)]
        if clash:
            problems.append(f"HTTPRoute {ref['name']}: rule names {clash} are the plugin's managed route names")
    for route_name, route in routes.items():
        rule_names = [r["name"] for r in route["spec"]["rules"] if r.get("name")]
        if len(set(rule_names)) != len(rule_names):
            problems.append(f"HTTPRoute {route_name}: rule names are not unique: {rule_names}")
        for rule in route["spec"]["rules"]:
            for ref in rule.get("backendRefs") or []:
                referred = services.get(ref["name"])
                if referred is None:
                    problems.append(f"HTTPRoute {route_name}: backendRef {ref['name']!r} is not a Service of this base")
                elif ref.get("port") not in {p["port"] for p in referred["spec"].get("ports") or []}:
                    port = ref.get("port")
                    problems.append(f"HTTPRoute {route_name}: backendRef {ref['name']} port {port} is not a port of it")
            if route_name not in managed_names and canary.get("canaryService") in {
                r["name"] for r in rule.get("backendRefs") or []
            }:
                problems.append(f"HTTPRoute {route_name}: a fixed route sends to the canary Service")
    return problems


def _managed_name(rule: str, managed: set[str]) -> bool:
    """The plugin names its rules after the managed route, then NAME-1, NAME-2 for further source rules."""
    return rule in managed or any(re.fullmatch(rf"{re.escape(m)}-\d+", rule) for m in managed)


def check_analysis(argo_rollout: dict, docs: list[dict], exported: dict[str, set[str]]) -> list[str]:
    """The background analysis and every step's analysis: templates of this base, args supplied, sound queries."""
    canary = argo_rollout["spec"]["strategy"].get("canary") or {}
    analysis, problems = canary.get("analysis") or {}, []
    templates = _kinds(docs, "AnalysisTemplate")
    steps = canary.get("steps") or []
    name = argo_rollout["metadata"]["name"]
    step_analyses = [(i, s["analysis"]) for i, s in enumerate(steps) if s.get("analysis")]
    if not analysis.get("templates") and not step_analyses:
        return [f"Rollout {name}: no analysis, in the background or at a step: the gates would never be judged"]
    checked: set[tuple[str, frozenset]] = set()
    if analysis.get("templates"):
        start, count = analysis.get("startingStep", 0), len(steps)
        if not 0 <= start < count:
            problems.append(f"Rollout {name}: analysis.startingStep {start} is not a step (0-{count - 1})")
        supplied = {a["name"] for a in analysis.get("args") or []}
        problems += _templates(f"Rollout {name}", analysis["templates"], templates, supplied, exported, checked)
    weight = 0
    for index, step in enumerate(steps):
        weight = step.get("setWeight", weight)
        if not step.get("analysis"):
            continue
        where = f"Rollout {name}: steps[{index}].analysis"
        args = {a["name"]: a for a in step["analysis"].get("args") or []}
        given = (args.get(ARGS["weight"]) or {}).get("value")
        if ARGS["weight"] in args and given != str(weight):
            problems.append(f"{where}: arg {ARGS['weight']} is {given!r}, not the weight its step set ({weight})")
        problems += _templates(where, step["analysis"].get("templates") or [], templates, set(args), exported, checked)
    return problems


def _templates(
    where: str, refs: list[dict], templates: dict, supplied: set[str], exported: dict, checked: set
) -> list[str]:
    """Each referenced template exists and is sound with these args (each template and args checked once)."""
    problems = []
    for ref in refs:
        wanted = ref.get("templateName")
        template = templates.get(wanted)
        if template is None:
            problems.append(f"{where}: templateName {wanted!r} is not an AnalysisTemplate of this base")
            continue
        if (wanted, frozenset(supplied)) not in checked:
            checked.add((wanted, frozenset(supplied)))
            problems += check_template(template, supplied, exported)
    return problems


def check_template(template: dict, supplied: set[str], exported: dict[str, set[str]]) -> list[str]:
    name, problems = template["metadata"]["name"], []
    declared = {a["name"]: a for a in template["spec"].get("args") or []}
    for arg, spec in declared.items():
        if "value" not in spec and "valueFrom" not in spec and arg not in supplied:
            problems.append(f"AnalysisTemplate {name}: arg {arg!r} has no value and the Rollout does not supply it")
    metric_names = [m["name"] for m in template["spec"]["metrics"]]
    if len(set(metric_names)) != len(metric_names):
        problems.append(f"AnalysisTemplate {name}: metric names are not unique: {metric_names}")
    for dry in template["spec"].get("dryRun") or []:
        if dry.get("metricName") not in metric_names:
            problems.append(
                f"AnalysisTemplate {name}: dryRun names metric {dry.get('metricName')!r}, not one of {metric_names}"
            )
    for metric in template["spec"]["metrics"]:
        where = f"AnalysisTemplate {name}: metric {metric['name']}"
        prometheus = (metric.get("provider") or {}).get("prometheus") or {}
        query = prometheus.get("query")
        if not is_http_url(prometheus.get("address")):
            problems.append(f"{where}: Prometheus address {prometheus.get('address')!r} is not an http(s) URL")
        if not query:
            problems.append(f"{where}: no Prometheus query")
            continue
        for arg in sorted(set(ARG.findall(query)) - set(declared)):
            problems.append(f"{where}: the query uses {{{{args.{arg}}}}}, which the template does not declare")
        problems += [f"{where}: {p}" for p in check_query(query, exported)]
        try:
            empty = verdict(metric, [])
        except CanaryError as exc:
            problems.append(str(exc))
            continue
        if empty != "Inconclusive":
            problems.append(f"{where}: an empty answer (too little traffic) would be {empty}, not Inconclusive")
    return problems


def check_query(query: str, exported: dict[str, set[str]]) -> list[str]:
    """Series and labels that the backends export (plus the scrape's pod labels); BentoML's series on the model's
    endpoint, not a probe (the prediction metrics count the model's rows only, and have no endpoint label)."""
    problems = []
    selectors = SELECTOR.findall(query)
    if not selectors:
        return ["the query selects no series"]
    for series, body in dict.fromkeys(selectors):  # each distinct selector once
        if series not in exported:
            known = ", ".join(sorted(exported))
            problems.append(f"series {series!r} is not exported by the backends (they export {known})")
            continue
        matchers = MATCHER.findall(body)
        allowed = exported[series] | set(SCRAPE_LABELS)
        for label, _op, _value in matchers:
            if label not in allowed:
                problems.append(f"label {label!r} is not on {series} (it has {', '.join(sorted(allowed))})")
        endpoint = [(op, v) for label, op, v in matchers if label == "endpoint"]
        if "endpoint" in exported[series] and (not endpoint or endpoint[0][0] != "=" or endpoint[0][1] in PROBES):
            problems.append(f'{series} must select the model\'s endpoint with endpoint="...", so probes never count')
        for label in SCRAPE_LABELS:
            if label not in {m[0] for m in matchers}:
                problems.append(f"{series} does not select the pods by {label}")
    for group in GROUPING.findall(query):
        for label in filter(None, (g.strip() for g in group.split(","))):
            if not any(label in exported.get(s, set()) for s, _ in selectors):
                problems.append(f"grouping label {label!r} is on none of the selected series")
    return problems


def problems(docs: list[dict], exported: dict[str, set[str]] | None = None) -> list[str]:
    """Every semantic problem of a rendered base (a list of manifests). `exported`: series -> labels of what the
    backends export (default: BentoML's own only; `exports(names)` adds the service's prediction metrics)."""
    exported = EXPORTED if exported is None else exported
    argo_rollouts = list(_kinds(docs, "Rollout").values())
    if len(argo_rollouts) != 1:
        return [f"the base must hold exactly one Rollout, found {len(argo_rollouts)}"]
    argo_rollout = argo_rollouts[0]
    if not (argo_rollout.get("spec", {}).get("strategy") or {}).get("canary"):
        return [f"Rollout {argo_rollout['metadata']['name']}: strategy.canary is missing"]
    try:
        return (
            check_names(docs)
            + check_steps(argo_rollout)
            + check_routes(argo_rollout, docs)
            + check_analysis(argo_rollout, docs, exported)
        )
    except (KeyError, TypeError, AttributeError) as exc:  # a structural hole: the schemas name it precisely
        return [f"a required field is missing or mistyped ({exc!r}); validate the base against the schemas"]


def kustomize(folder: Path) -> list[dict]:
    """`kubectl kustomize FOLDER`, parsed (offline)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise CanaryError("kubectl is not installed: it renders the kustomize base (kubectl kustomize)")
    try:
        argv = [kubectl, "kustomize", str(folder)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise CanaryError(f"kubectl kustomize {folder} did not finish in 60 s") from None
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        raise CanaryError(f"kubectl kustomize {folder}: {last}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def ensure(docs: list[dict], exported: dict[str, set[str]] | None = None) -> None:
    found = problems(docs, exported)
    if found:
        raise CanaryError(f"{len(found)} problem(s): " + "; ".join(found))
