"""The Kubernetes gates: PromQL over BentoML's series and the model's prediction metrics, and the AnalysisTemplates
that judge them (`-gates` in the background, `-split` after each step's hold), from the same rollout spec as the
one-host rollout. Used by manifests.py, which writes the rest of the base.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from canary_kit.core.endpoints import DURATION, REQUESTS
from canary_kit.k8s.served import ARGS, HASH_LABEL, ServedModel, duration, number
from canary_kit.policy.registry import GATES
from canary_kit.policy.spec import RolloutSpec, applies
from canary_kit.policy.stats import chi2_critical

# --- PromQL over BentoML's series and the model's own --------------------------------------------------------

TINY = "1e-300"  # a share is never this small unless it is 0: log2(TINY/m) is finite, so 0 * log2(..) stays 0


def selector(served: ServedModel, which: str, extra: str = "") -> str:
    """BentoML's series of one ReplicaSet's pods (canary or stable), the model's endpoint only."""
    return f'{{{pods(which)},service_name="{served.service_name}",endpoint="{served.endpoint}"{extra}}}'


def pods(which: str) -> str:
    """The matchers of one ReplicaSet's pods: the namespace and Argo's pod-template hash (canary or stable)."""
    return f'namespace="{{{{args.{ARGS["namespace"]}}}}}",{HASH_LABEL}="{{{{args.{ARGS[which]}}}}}"'


def increase(series: str, sel: str) -> str:
    return f"increase({series}{sel}[{{{{args.{ARGS['window']}}}}}])"


def indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line for line in text.splitlines())


def idle_passes(figure: str, green_rows: str, blue_rows: str, rows: int) -> str:
    """A comparison with blue: the figure once both sides have `rows`; 0 (nothing to compare, passes) when blue
    served none (green at 100%, as p99-ratio); nothing (Inconclusive) while either side is thinner."""
    return (
        f"(\n  (\n{indent(figure, '    ')}\n  )\n  and on() ({blue_rows} >= {rows})\n"
        f"  or on()\n  (vector(0) unless on() ({blue_rows} > 0))\n)\nand on() ({green_rows} >= {rows})"
    )


def class_divergence(served: ServedModel, rows: int) -> str:
    """The Jensen-Shannon distance (log2, so within [0, 1]) between canary's and stable's predicted-class shares
    over the window: with p, q the shares and m = (p + q) / 2, sqrt(sum over classes of 0.5 p log2(p/m) +
    0.5 q log2(q/m)). A class with no row on one side has share 0 there (the `or` adds it), and clamp_min keeps
    0 * log2(0) at 0 instead of NaN; canary_kit.policy.stats.js_distance is the same figure (the tests compare them)."""
    counter = f"{served.class_metric}_total"
    per_class = {w: f"sum by (class) ({increase(counter, '{' + pods(w) + '}')})" for w in ("canary", "stable")}
    total = {w: f"sum({increase(counter, '{' + pods(w) + '}')})" for w in ("canary", "stable")}
    p = f"({per_class['canary']} / on() group_left() {total['canary']} or {per_class['stable']} * 0)"
    q = f"({per_class['stable']} / on() group_left() {total['stable']} or {per_class['canary']} * 0)"
    m = f"clamp_min(({p} + {q}) / 2, {TINY})"
    terms = [f"0.5 * {x} * log2(clamp_min({x}, {TINY}) / {m})" for x in (p, q)]
    figure = f"sqrt(clamp_min(sum(\n  {terms[0]}\n  +\n  {terms[1]}\n), 0))"
    return idle_passes(figure, total["canary"], total["stable"], rows)


def confidence_drop(served: ServedModel, rows: int) -> str:
    """Stable's mean top-class probability minus canary's over the window (the histogram's _sum over _count)."""
    name = served.confidence_metric

    def part(suffix: str, which: str) -> str:
        return f"sum({increase(f'{name}_{suffix}', '{' + pods(which) + '}')})"

    mean = {w: f"{part('sum', w)} / {part('count', w)}" for w in ("canary", "stable")}
    figure = f"({mean['stable']})\n-\n({mean['canary']})"
    return idle_passes(figure, part("count", "canary"), part("count", "stable"), rows)


def ks_distance(served: ServedModel, rows: int) -> str:
    """The two-sample Kolmogorov-Smirnov distance between canary's and stable's predicted values over the window,
    on the value histogram's buckets: the largest gap between the two cumulative shares at any bucket bound. A
    histogram knows values only to their bucket, so this is at most the exact distance (stats.ks_distance), equal
    when no bucket holds values of both sides in different order; the service's buckets should be fine enough."""
    name = served.value_metric

    def cdf(which: str) -> str:
        per_bound = f"sum by (le) ({increase(f'{name}_bucket', '{' + pods(which) + '}')})"
        return f"{per_bound} / on() group_left() {count(which)}"

    def count(which: str) -> str:
        return f"sum({increase(f'{name}_count', '{' + pods(which) + '}')})"

    figure = f"max(abs(\n  {cdf('canary')}\n  -\n  {cdf('stable')}\n))"
    return idle_passes(figure, count("canary"), count("stable"), rows)


def sample_ratio(served: ServedModel, rows: int) -> str:
    """The chi-square statistic (1 degree of freedom) of canary's /predict requests against the weight set (the
    step passes it as the arg `weight`): (g - n w)^2 / (n w (1 - w)), with n = g + s. PromQL has no chi-square
    distribution, so the gate compares the statistic with the one of its p-value (stats.chi2_critical).

    g and s are each side's counter now minus a window ago, not increase(): increase() extrapolates each scrape
    target's samples to the window's ends by a factor of its own scrape phase, a bias between the two sides that the
    statistic grows with n (measured: chi-square 5.1 for an honest 455/445 split over 5 s). A series new in the
    window counts whole (it started at 0); a counter that fell (a restarted pod) gives no answer (Inconclusive)."""
    window = f"{{{{args.{ARGS['window']}}}}}"

    def requests(which: str) -> str:
        series = f"{REQUESTS}_total{selector(served, which)}"
        return f"(sum({series}) - sum({series} offset {window}) or sum({series}) or vector(0))"

    g, s = requests("canary"), requests("stable")
    w = f"({{{{args.{ARGS['weight']}}}}} / 100)"
    return (
        f"(\n  {g} - ({g} + {s}) * {w}\n) ^ 2\n/ (({g} + {s}) * {w} * (1 - {w}))\n"
        f"and on() (({g} + {s}) >= {rows})\nand on() ({g} >= 0) and on() ({s} >= 0)"
    )


# --- each gate's query, registered under its metric's name (registry.py's `argo`) -------------------------------

Built = tuple[str, float]  # the query, and the limit its figure is compared with
Builder = Callable[[ServedModel, RolloutSpec, str], Built | None]  # (served, spec, gate name); None: not rendered


@dataclass(frozen=True)
class Query:
    build: Builder
    split: bool = False  # judged after each step's hold, knowing the weight set (the `-split` template)


QUERIES: dict[str, Query] = {}


def query(metric: str, split: bool = False) -> Callable[[Builder], Builder]:
    """Register the query of the gate whose declaration names this metric (registry.py's `argo`)."""

    def register(build: Builder) -> Builder:
        QUERIES[metric] = Query(build, split)
        return build

    return register


def _green_total(served: ServedModel) -> str:
    return f"sum({increase(REQUESTS + '_total', selector(served, 'canary'))})"


def _enough(served: ServedModel, spec: RolloutSpec, gate: str) -> str:
    return f"({_green_total(served)} >= {spec.gates[gate].min_rows})"


def _p99(sel: str) -> str:
    return f"histogram_quantile(0.99, sum by (le) ({increase(DURATION + '_bucket', sel)}))"


@query("error-rate")
def _error_rate(served: ServedModel, spec: RolloutSpec, name: str) -> Built:
    """As the one-host judge: errors that break the gate whatever the next requests bring fail even a thin window."""
    gate, total = spec.gates[name], _green_total(served)
    assert gate.threshold is not None  # queries() renders only gates that are on
    failed = selector(served, "canary", ',http_response_code=~"5.."')
    errors = f"(sum({increase(REQUESTS + '_total', failed)}) or vector(0))"
    rate, rows = number(gate.threshold), gate.min_rows
    return (
        f"({errors} / clamp_min({total}, {rows}) > {rate})\nor\n"
        f"({errors} / {total} and on() {_enough(served, spec, name)})",
        gate.threshold,
    )


@query("p99-seconds")
def _p99_seconds(served: ServedModel, spec: RolloutSpec, name: str) -> Built:
    threshold = spec.gates[name].threshold
    assert threshold is not None
    return f"{_p99(selector(served, 'canary'))}\nand on() {_enough(served, spec, name)}", threshold / 1000


@query("p99-ratio")
def _p99_ratio(served: ServedModel, spec: RolloutSpec, name: str) -> Built:
    """Blue idle (green at 100%): no ratio to judge, as the one-host judge, so 0 (passes)."""
    threshold = spec.gates[name].threshold
    assert threshold is not None
    green, blue = _p99(selector(served, "canary")), _p99(selector(served, "stable"))
    enough = _enough(served, spec, name)
    return f"(\n  {green}\n  / ({blue} > 0)\n  or on() vector(0)\n)\nand on() {enough}", threshold


def _model_query(figure: Callable[[ServedModel, int], str], metric: str | None) -> Builder:
    """A quality gate's builder: its figure over the service's prediction metric, not rendered without it."""

    def build(served: ServedModel, spec: RolloutSpec, name: str) -> Built | None:
        gate = spec.gates[name]
        if not getattr(served, metric or "") or gate.threshold is None:
            return None
        return figure(served, gate.min_rows), gate.threshold

    return build


query("class-divergence")(_model_query(class_divergence, "class_metric"))
query("confidence-drop")(_model_query(confidence_drop, "confidence_metric"))
# A regressor's mean shift in blue's standard deviations has no PromQL form (a histogram holds no spread): only the
# KS distance is rendered.
query("ks-distance")(_model_query(ks_distance, "value_metric"))


@query("sample-ratio", split=True)
def _sample_ratio(served: ServedModel, spec: RolloutSpec, name: str) -> Built:
    gate = spec.gates[name]
    assert gate.threshold is not None
    return sample_ratio(served, gate.min_rows), chi2_critical(gate.threshold)


def _rendered(served: ServedModel, spec: RolloutSpec, split: bool) -> dict[str, tuple[str, str, float]]:
    """metric -> (the spec's gate, its query, its limit), in the spec's order: the gates that are on, that judge
    this model's task and have a query on Kubernetes."""
    out: dict[str, tuple[str, str, float]] = {}
    for name, info in GATES.items():
        if info.argo is None or QUERIES[info.argo].split != split:
            continue
        if spec.gates[name].threshold is None or not applies(name, served.task):
            continue
        if (built := QUERIES[info.argo].build(served, spec, name)) is not None:
            out[info.argo] = (name, *built)
    return out


def queries(served: ServedModel, spec: RolloutSpec) -> dict[str, tuple[str, str, float]]:
    """The background gates: name -> (the spec's gate, its query, its threshold). Off gates (threshold null), the
    other task's gates and the quality gates of a service that exports no prediction metrics are left out. No sample
    comes back while a gate's evidence is below its min_rows (green requests for the HTTP gates, each side's rows for
    the quality gates), so the measurement is Inconclusive."""
    return _rendered(served, spec, split=False)


def split_queries(served: ServedModel, spec: RolloutSpec) -> dict[str, tuple[str, str, float]]:
    """The step gates (judged after each hold, knowing the weight set): the sample-ratio mismatch."""
    return _rendered(served, spec, split=True)


def conditions(limit: float, on_failure: str) -> dict[str, str]:
    """A figure above the limit fails (Argo aborts: rollback); with on_failure: pause it is Inconclusive instead,
    which Argo answers by pausing the rollout where it is (no analysis result pauses otherwise)."""
    success = f"len(result) == 1 && result[0] <= {number(limit)}"
    if on_failure == "pause":
        return {"successCondition": success, "failureCondition": "false"}
    return {"successCondition": success, "failureCondition": f"len(result) == 1 && result[0] > {number(limit)}"}


def dry_run(spec: RolloutSpec, found: dict[str, tuple[str, str, float]]) -> list[dict]:
    """Argo's dryRun: the metrics of the gates the spec marks dry_run are measured, never fail the run."""
    return [{"metricName": name} for name, (gate, _, _) in found.items() if spec.gates[gate].dry_run]


def limits(spec: RolloutSpec) -> dict[str, int]:
    """Measurements tolerated before the metric (so the run) fails or turns Inconclusive. With on_failure: pause a
    breach is Inconclusive too, counted with thin windows: the stricter of both limits, so it never waits longer."""
    inconclusive = spec.max_inconclusive - 1
    if spec.on_failure == "pause":
        inconclusive = min(spec.max_inconclusive, spec.max_failed_checks) - 1
    return {"failureLimit": spec.max_failed_checks - 1, "inconclusiveLimit": inconclusive}


def template(name: str, served: ServedModel, spec: RolloutSpec, found: dict, args: list[dict], timing: dict) -> dict:
    metrics = []
    for metric, (_, query, limit) in found.items():
        metrics.append(
            {
                "name": metric,
                **timing,
                **limits(spec),
                **conditions(limit, spec.on_failure),
                "provider": {"prometheus": {"address": served.prometheus, "query": query + "\n"}},
            }
        )
    body: dict = {"args": args}
    if dry := dry_run(spec, found):
        body["dryRun"] = dry
    body["metrics"] = metrics
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": name, "labels": {"app": served.app}},
        "spec": body,
    }


def hash_args() -> list[dict]:
    return [{"name": ARGS[k]} for k in ("canary", "stable", "namespace")]


def analysis_template(served: ServedModel, spec: RolloutSpec) -> dict | None:
    """The background gates, measured every hold over the hold's window (None when every gate is off)."""
    found = queries(served, spec)
    if not found:
        return None
    window = duration(spec.hold_seconds)
    args = hash_args() + [{"name": ARGS["window"], "value": window}]
    timing = {"initialDelay": window, "interval": window}  # the first window is judged once it is full
    return template(f"{served.app}-gates", served, spec, found, args, timing)


def split_template(served: ServedModel, spec: RolloutSpec) -> dict | None:
    """The step gate: after each hold below 100%, the window just held against the weight set. Measured at once,
    again every hold while Inconclusive (too few requests) up to max_inconclusive times; the first success ends it
    (consecutiveSuccessLimit 1), so a step waits only for evidence, as the one-host rollout does."""
    found = split_queries(served, spec)
    if not found:
        return None
    window = duration(spec.hold_seconds)
    args = hash_args() + [{"name": ARGS["window"], "value": window}, {"name": ARGS["weight"]}]
    # Enough measurements for either limit to be reached first: the count itself never decides.
    count = spec.max_inconclusive + spec.max_failed_checks - 1
    timing = {"interval": window, "count": count, "consecutiveSuccessLimit": 1}
    return template(f"{served.app}-split", served, spec, found, args, timing)
