"""The Kubernetes gates run for real: the committed AnalysisTemplates' PromQL, evaluated by a real Prometheus
scraping the two backends of a running canary stack, judges the same window as `canary status` with the same
figures; thin traffic comes out Inconclusive; the quality gates (class divergence, confidence drop) fail a weak
green (v1.9.0) and pass v1.2.0, agreeing with canary_kit.policy.stats on the same counters; the sample-ratio gate fails
a split that is not the weight set and passes an honest one; and the series and labels the gates use are what the
backends export.

On Kubernetes the template selects pods by `namespace` and `rollouts_pod_template_hash` (Argo's args); here the
scrape config puts those labels on the local backends: namespace "local", hash "blue", "green" (and "synthetic",
a stand-in exporter whose green answers 10% 5xx, as no real backend can be made to fail on purpose).
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from canary_kit.cli.app import app
from canary_kit.core.config import Settings
from canary_kit.k8s import analysis as k8s_analysis
from canary_kit.k8s import checks as k8s_checks
from canary_kit.k8s import manifests
from canary_kit.k8s.served import HASH_LABEL
from canary_kit.observe.metrics import Snapshot, window
from canary_kit.policy.spec import load_spec
from canary_kit.policy.stats import chi2_critical, js_distance, srm_p_value
from canary_kit.stacks.local import Child
from conftest import EXAMPLE_ROW, ROOT, data_rows, free_port, running_stack
from conftest import k8s_served as served
from load import Load, tally

pytestmark = pytest.mark.integration
TEMPLATE = ROOT / "deploy" / "k8s" / "analysistemplate.yaml"
NAMESPACE = "local"
LIMIT = 60.0  # seconds for anything to come up


def canary(settings, *args):
    result = CliRunner().invoke(app, [*args, "--state-dir", str(settings.state_dir)])
    assert result.exit_code == 0, result.output
    return result.output


@contextmanager
def prometheus(targets: dict[str, str], folder: Path):
    """A real Prometheus on a free loopback port, scraping {hash label: host:port} every second; stopped on exit."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus): the gates cannot run for real")
    static = [{"targets": [addr], "labels": {"namespace": NAMESPACE, HASH_LABEL: h}} for h, addr in targets.items()]
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "bentoml", "static_configs": static}],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        binary,
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    child = Child("prometheus", argv, folder / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    try:
        child.start()
        deadline = time.monotonic() + LIMIT
        while True:
            try:
                active = httpx.get(f"{url}/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
                if len(active) == len(targets) and all(t["health"] == "up" for t in active):
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            assert time.monotonic() < deadline, (
                f"prometheus targets not up: {(folder / 'prometheus.log').read_text()[-2000:]}"
            )
            assert child.exit_code() is None, f"prometheus exited: {(folder / 'prometheus.log').read_text()[-2000:]}"
            time.sleep(0.3)
        yield url
    finally:
        child.stop()


class Synthetic(BaseHTTPRequestHandler):
    """BentoML-shaped counters growing 50 requests a second, one in ten answered 500."""

    started = time.monotonic()

    @classmethod
    def text(cls, at: float | None = None) -> str:
        k = 100 + int(((at or time.monotonic()) - cls.started) * 5)
        labels = 'endpoint="/predict",service_name="penguin_classifier",runner_name="penguin_classifier"'
        return (
            "# TYPE bentoml_service_request_total counter\n"
            f'bentoml_service_request_total{{{labels},http_response_code="200"}} {9 * k}\n'
            f'bentoml_service_request_total{{{labels},http_response_code="500"}} {k}\n'
        )

    def do_GET(self):
        body = self.text().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def gates() -> dict[str, dict]:
    """Every metric of the committed templates: the background gates and the step's sample-ratio gate."""
    return {m["name"]: m for doc in yaml.safe_load_all(TEMPLATE.read_text()) for m in doc["spec"]["metrics"]}


def evaluate(url: str, query: str, args: dict[str, str], at: float) -> list[float]:
    """One AnalysisTemplate query, its {{args.*}} filled in as Argo does, through Prometheus' HTTP API."""
    resolved = k8s_checks.ARG.sub(lambda m: args[m.group(1)], query)
    answer = httpx.get(f"{url}/api/v1/query", params={"query": resolved, "time": f"{at:.3f}"}, timeout=10).json()
    assert answer["status"] == "success", answer
    return [float(sample["value"][1]) for sample in answer["data"]["result"]]


def requests_in(url: str, which: str, seconds: int, at: float) -> float | None:
    total = k8s_analysis.increase("bentoml_service_request_total", k8s_analysis.selector(served(), "canary"))
    found = evaluate(url, f"sum({total})", {"canary-hash": which, "namespace": NAMESPACE, "window": f"{seconds}s"}, at)
    return found[0] if found else None


def bucket(seconds: float, bounds: list[float]) -> tuple[float, float]:
    """The histogram bucket (lower, upper] holding a latency: the resolution a quantile has."""
    upper = min((b for b in bounds if b >= seconds), default=math.inf)
    return max((b for b in bounds if b < upper), default=0.0), upper


def judged(
    url: str, started: float, at: float, canary_hash: str = "green", weight: int = 50
) -> tuple[int, dict[str, list[float]]]:
    """The window from just after `started` to `at`, as each gate's query sees it (the step set `weight`)."""
    seconds = int(at - started) - 1  # begins after the baseline, before any request of the window
    args = {
        "canary-hash": canary_hash,
        "stable-hash": "blue",
        "namespace": NAMESPACE,
        "window": f"{seconds}s",
        "weight": str(weight),
    }
    return seconds, {name: evaluate(url, m["provider"]["prometheus"]["query"], args, at) for name, m in gates().items()}


def test_gates_in_prometheus_judge_the_window_as_canary_status_does(stack, tmp_path):
    settings = stack.settings
    spec = load_spec(None, {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), Synthetic)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    targets = {
        "blue": settings.slot_url("blue").removeprefix("http://"),
        "green": settings.slot_url("green_a").removeprefix("http://"),
        "synthetic": f"127.0.0.1:{server.server_address[1]}",
    }
    try:
        canary(settings, "set-weight", "50", "-m", "k8s gates test")
        Load(settings.url, workers=2, max_requests=40, max_seconds=60).run()  # both /predict series exist before
        with prometheus(targets, tmp_path) as url:
            time.sleep(2)
            canary(settings, "set-weight", "50", "-m", "k8s gates test: window")  # the status baseline
            started = time.time()
            time.sleep(2.5)  # scrapes of the baseline counts inside the window
            load = Load(settings.url, workers=4, max_requests=600, max_seconds=90).run()
            time.sleep(3)  # the last requests scraped
            status = json.loads(canary(settings, "status", "--json"))
            at = time.time()
            seconds, found = judged(url, started, at)
            green, blue = (status["backends"][c]["since_change"] for c in ("green", "blue"))
            counted = {c: requests_in(url, c, seconds, at) for c in ("green", "blue")}
            verdicts = {name: k8s_checks.verdict(m, found[name]) for name, m in gates().items()}
            print(
                f"\nwindow {seconds}s, load {dict(tally(load.answers))}\n"
                f"canary status: green {green}\n               blue  {blue}\n"
                f"prometheus:    green requests {counted['green']}, blue requests {counted['blue']}, "
                f"gates {found}\nverdicts:      {verdicts}"
            )
            rows = spec.gates.max_error_rate.min_rows
            assert green["requests"] >= rows and blue["requests"] >= rows
            for color, figures in (("green", green), ("blue", blue)):  # increase() extrapolates to the window's ends
                slack = figures["requests"] * 2.2 / (seconds - 2.2) + 5  # up to 1.1 scrape intervals each side
                assert abs(counted[color] - figures["requests"]) <= slack, (color, counted, figures)
            assert found["error-rate"] == [pytest.approx(green["error_rate"], abs=1e-9)]
            bounds = sorted(
                float(b)
                for b in Snapshot.parse(httpx.get(settings.slot_url("green_a") + "/metrics").text).buckets
                if b != math.inf
            )
            low, high = bucket(green["p99_ms"] / 1000, bounds)
            assert abs(found["p99-seconds"][0] - green["p99_ms"] / 1000) <= high - low, (found, green, (low, high))
            (g_low, g_high), (b_low, b_high) = (
                bucket(green["p99_ms"] / 1000, bounds),
                bucket(blue["p99_ms"] / 1000, bounds),
            )
            assert g_low / b_high <= found["p99-ratio"][0] <= (g_high / b_low if b_low else math.inf)
            # The same verdicts as the figures `canary status` computed (p99 within a bucket: a slow machine may fail).
            assert (verdicts["error-rate"] == "Failed") == (green["error_rate"] > spec.gates.max_error_rate.threshold)
            assert "Inconclusive" not in verdicts.values()
            assert verdicts["sample-ratio"] == "Successful"  # nginx's honest 50% split

            # Thin traffic: a handful of green requests is no evidence either way.
            canary(settings, "set-weight", "50", "-m", "k8s gates test: thin window")
            started = time.time()
            time.sleep(2.5)
            with httpx.Client(timeout=10) as client:
                for _ in range(5):
                    client.post(settings.slot_url("green_a") + "/predict", json={"instances": [EXAMPLE_ROW]})
            time.sleep(3)
            thin = json.loads(canary(settings, "status", "--json"))["backends"]["green"]["since_change"]
            seconds, found = judged(url, started, time.time())
            verdicts = {name: k8s_checks.verdict(m, found[name]) for name, m in gates().items()}
            print(f"thin window {seconds}s: canary status green {thin}\nprometheus gates {found} -> {verdicts}")
            assert thin["requests"] == 5 < min(gate.min_rows for _, gate in spec.gates.items())
            assert found == {name: [] for name in gates()} and set(verdicts.values()) == {"Inconclusive"}

            # 5xx for real arithmetic: the stand-in exporter's green answers one request in ten with 500.
            first, at = Snapshot.parse(Synthetic.text(time.monotonic() - 8)), time.time()
            seconds, found = judged(url, at - 9, at, canary_hash="synthetic")
            figures = window(first, Snapshot.parse(Synthetic.text())).to_json()
            verdict = k8s_checks.verdict(gates()["error-rate"], found["error-rate"])
            print(
                f"synthetic {seconds}s: prometheus error rate {found['error-rate']} -> {verdict}; "
                f"snapshots {figures['errors']}/{figures['requests']} = {figures['error_rate']}"
            )
            assert found["error-rate"] == [pytest.approx(figures["error_rate"], rel=1e-6)] and verdict == "Failed"
            assert figures["error_rate"] > spec.gates.max_error_rate.threshold
    finally:
        server.shutdown()
        server.server_close()
        canary(settings, "set-weight", "10", "-m", "k8s gates test: back to the fixture's split")


QUALITY = ("class-divergence", "confidence-drop", "sample-ratio")


def by_class(url: str, which: str, args: dict[str, str], at: float) -> dict[str, float]:
    """The rows per predicted class of one side over the window, as Prometheus counts them (increase)."""
    series = f"{Settings().class_metric}_total"
    query = f"sum by (class) ({k8s_analysis.increase(series, '{' + k8s_analysis.pods(which) + '}')})"
    resolved = k8s_checks.ARG.sub(lambda m: args[m.group(1)], query)
    answer = httpx.get(f"{url}/api/v1/query", params={"query": resolved, "time": f"{at:.3f}"}, timeout=10).json()
    return {s["metric"]["class"]: float(s["value"][1]) for s in answer["data"]["result"]}


def one(url: str, query: str, args: dict[str, str], at: float) -> float:
    (value,) = evaluate(url, query, args, at)
    return value


def quality_window(settings, url: str, weight: int, **load) -> dict:
    """One window at `weight` under `load` (Load's options): the quality queries' answers and verdicts, the same
    figures computed by canary_kit.policy.stats from the counters Prometheus holds, and `canary status`'s figures."""
    canary(settings, "set-weight", str(weight), "-m", "k8s quality gates: window")  # the status baseline
    started = time.time()
    time.sleep(2.5)  # scrapes of the baseline counts inside the window
    answers = Load(settings.url, **load).run().answers
    time.sleep(3)  # the last requests scraped
    status = json.loads(canary(settings, "status", "--json"))["backends"]
    at = time.time()
    seconds, found = judged(url, started, at, weight=weight)
    args = {"canary-hash": "green", "stable-hash": "blue", "namespace": NAMESPACE, "window": f"{seconds}s"}
    classes = {side: by_class(url, side, args, at) for side in ("canary", "stable")}
    confidence = Settings().confidence_metric

    def mean(which: str) -> float | None:
        sums, counts = (
            one(
                url,
                f"sum({k8s_analysis.increase(f'{confidence}_{part}', '{' + k8s_analysis.pods(which) + '}')})",
                args,
                at,
            )
            for part in ("sum", "count")
        )
        return sums / counts if counts else None

    def requests(which: str) -> float:  # now minus a window ago, as the gate counts them
        series = f"bentoml_service_request_total{k8s_analysis.selector(served(), which)}"
        return one(url, f"sum({series}) - sum({series} offset {{{{args.window}}}})", args, at)

    requests = {side: requests(side) for side in ("canary", "stable")}
    n, w = requests["canary"] + requests["stable"], weight / 100
    return {
        "seconds": seconds,
        "load": dict(tally(answers)),
        "found": {name: found[name] for name in QUALITY},
        "verdicts": {name: k8s_checks.verdict(gates()[name], found[name]) for name in QUALITY},
        "stats": {  # canary_kit.policy.stats on the very counters the queries read
            "class-divergence": js_distance(classes["canary"], classes["stable"]),
            "confidence-drop": None if None in (mean("stable"), mean("canary")) else mean("stable") - mean("canary"),
            "sample-ratio": (requests["canary"] - n * w) ** 2 / (n * w * (1 - w)),
        },
        "classes": classes,
        "status": {color: status[color]["since_change"] for color in ("green", "blue")},
    }


def test_quality_gates_fail_the_weak_green_and_pass_v1_2_0(more_versions, tmp_path):
    """Real backends, real Prometheus: green = v1.9.0 (logistic regression on bill depth alone) against blue v1.0.0
    fails class divergence and confidence drop; green = v1.2.0 passes them. Sample-ratio judges the split, not the
    model: clients that all send one X-User-ID (sticky, so all on one side) fail it at 50%; nginx's honest split
    passes it in both stacks."""
    next_version, weak = more_versions
    spec = load_spec(None, {})
    rows = data_rows()
    results: dict[str, dict] = {}
    for green_version in (weak, next_version):
        folder = tmp_path / green_version
        folder.mkdir()
        with running_stack(folder / "state", green_version=green_version, pins=True) as running:  # sticky users
            settings = running.settings
            canary(settings, "set-weight", "50", "-m", "k8s quality gates test")
            Load(settings.url, workers=2, max_requests=40, max_seconds=60, rows=rows).run()  # every series exists
            targets = {
                c: settings.slot_url(s).removeprefix("http://") for c, s in (("blue", "blue"), ("green", "green_a"))
            }
            with prometheus(targets, folder) as url:
                time.sleep(2)
                results[green_version] = quality_window(
                    settings, url, 50, workers=4, max_requests=900, max_seconds=120, rows=rows
                )
                if green_version == weak:  # the split broken on purpose: one sticky user id for every client
                    skewed = quality_window(
                        settings,
                        url,
                        50,
                        workers=4,
                        max_requests=300,
                        max_seconds=60,
                        rows=rows,
                        headers={"X-User-ID": "the-same-user"},
                    )
                    results["skewed split"] = skewed
    thresholds = {
        "class-divergence": spec.gates.max_class_divergence.threshold,
        "confidence-drop": spec.gates.max_confidence_drop.threshold,
        "sample-ratio": chi2_critical(spec.gates.srm_p_value.threshold),
    }
    print(f"\nthresholds: {thresholds} (sample-ratio: chi-square statistic of p = {spec.gates.srm_p_value.threshold})")
    for name, result in results.items():
        green, blue = result["status"]["green"], result["status"]["blue"]
        print(
            f"{name}: window {result['seconds']}s, load {result['load']}\n"
            f"  prometheus {result['found']} -> {result['verdicts']}\n"
            f"  stats on the same counters {result['stats']}\n"
            f"  canary status: green {green['requests']} req {green['class_rows']} conf {green['confidence_mean']}; "
            f"blue {blue['requests']} req {blue['class_rows']} conf {blue['confidence_mean']}"
        )
    for name in (weak, next_version):  # the honest windows: both sides served rows
        result = results[name]
        for gate in QUALITY:  # the PromQL figure is canary_kit.policy.stats' figure of the same counters
            if result["found"][gate]:
                assert result["found"][gate] == [pytest.approx(result["stats"][gate], rel=1e-6, abs=1e-9)], (name, gate)
        green, blue = result["status"]["green"], result["status"]["blue"]
        if result["found"]["class-divergence"]:  # and close to what `canary status` counted (increase extrapolates)
            by_status = js_distance(green["class_rows"], blue["class_rows"])
            assert abs(result["found"]["class-divergence"][0] - by_status) <= 0.03, (name, by_status)
            drop = blue["confidence_mean"] - green["confidence_mean"]
            assert abs(result["found"]["confidence-drop"][0] - drop) <= 0.02, (name, drop)
    assert results[weak]["verdicts"]["class-divergence"] == "Failed"
    assert results[weak]["verdicts"]["confidence-drop"] == "Failed"
    assert results["skewed split"]["verdicts"]["sample-ratio"] == "Failed"
    assert results[next_version]["verdicts"] == {gate: "Successful" for gate in QUALITY}
    assert results[weak]["verdicts"]["sample-ratio"] == "Successful"  # the honest split, whatever the model
    for name in (weak, next_version):
        green, blue = results[name]["status"]["green"], results[name]["status"]["blue"]
        assert srm_p_value(green["requests"], blue["requests"], 0.5) >= spec.gates.srm_p_value.threshold
        n = green["requests"] + blue["requests"]  # no extrapolation: the very requests `canary status` counted
        assert results[name]["found"]["sample-ratio"][0] == pytest.approx(
            (green["requests"] - n / 2) ** 2 / (n / 4), abs=0.2
        )


def test_the_gates_use_only_series_and_labels_that_bentoml_exports(stack):
    with httpx.Client(timeout=10) as client:
        client.post(stack.settings.slot_url("green_a") + "/predict", json={"instances": [EXAMPLE_ROW]})
        text = client.get(stack.settings.slot_url("green_a") + "/metrics").text
    live = k8s_checks.exported_from(text)
    print(f"\nlive /metrics series: { {s: sorted(labels) for s, labels in live.items() if s.startswith('bentoml_')} }")
    print(f"the model's series: { {s: sorted(labels) for s, labels in live.items() if s.startswith('penguin_')} }")
    for series, labels in k8s_checks.exports(Settings().prediction_metrics).items():
        assert live.get(series) == labels, (
            f"{series}: checks assume {sorted(labels)}, the backend exports {sorted(live.get(series, []))}"
        )
    texts = manifests.manifests(served(), load_spec(None, {})).values()
    docs = [d for text in texts for d in yaml.safe_load_all(text) if d["kind"] != "Kustomization"]
    assert k8s_checks.problems(docs, exported=live) == []
