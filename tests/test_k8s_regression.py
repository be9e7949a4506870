"""A regressor's gate on Kubernetes, run for real: the rendered AnalysisTemplate's KS-distance query, evaluated by
a real Prometheus scraping two stand-in exporters of a predicted-value histogram (canary and stable pods), gives the
largest gap between the two sides' cumulative shares, as canary_kit.policy.stats.ks_distance gives it on the same
values; and a classifier's gates are left out of a regressor's template, a regressor's out of a classifier's."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from canary_kit.k8s import analysis as k8s_analysis
from canary_kit.k8s.served import ServedModel
from canary_kit.policy.spec import load_spec
from canary_kit.policy.stats import ks_distance
from test_k8s_prometheus import NAMESPACE, evaluate, prometheus

METRIC = "progression_prediction"
BOUNDS = [50, 100, 150, 200, 250, 300]
# Rows per second in each bucket (upper bound), for each side: stable spread out, canary bunched near the middle.
RATES = {"stable": [4, 8, 10, 8, 6, 4, 0], "canary": [0, 0, 22, 16, 2, 0, 0]}
MIDDLES = [25, 75, 125, 175, 225, 275, 325]  # a value inside each bucket, for the exact computation
STARTED = time.monotonic()


def exporter(side: str) -> type[BaseHTTPRequestHandler]:
    """A histogram of predicted values growing at RATES[side] rows per second per bucket."""

    class Histogram(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seconds = 100 + int((time.monotonic() - STARTED) * 4) / 4
            counts = [rate * seconds for rate in RATES[side]]
            lines = [f"# TYPE {METRIC} histogram"]
            cumulative = 0.0
            for bound, n in zip([*BOUNDS, "+Inf"], counts):
                cumulative += n
                lines.append(f'{METRIC}_bucket{{le="{bound}"}} {cumulative}')
            total = sum(c * m for c, m in zip(counts, MIDDLES))
            lines += [f"{METRIC}_count {cumulative}", f"{METRIC}_sum {total}"]
            body = ("\n".join(lines) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Histogram


def served(**given) -> ServedModel:
    return ServedModel(service_name="diabetes_progression", image="diabetes_progression", image_tag="v2", **given)


def test_a_regressors_template_judges_its_values_and_a_classifiers_its_classes():
    spec = load_spec(None, {})
    regressor = k8s_analysis.queries(served(task="regression", value_metric=METRIC, class_metric="c"), spec)
    classifier = k8s_analysis.queries(served(class_metric="c", value_metric=METRIC), spec)
    assert "ks-distance" in regressor and "class-divergence" not in regressor
    assert "class-divergence" in classifier and "ks-distance" not in classifier


@pytest.mark.integration
def test_the_ks_gate_in_prometheus_is_the_ks_distance_of_the_values(tmp_path):
    servers = {side: ThreadingHTTPServer(("127.0.0.1", 0), exporter(side)) for side in RATES}
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    targets = {side: f"127.0.0.1:{server.server_address[1]}" for side, server in servers.items()}
    spec = load_spec(None, {"max_ks_distance": 0.25})
    _, query, threshold = k8s_analysis.queries(served(task="regression", value_metric=METRIC), spec)["ks-distance"]
    try:
        with prometheus(targets, tmp_path) as url:
            time.sleep(8)  # several scrapes: increase() over the window needs two samples a side
            args = {"canary-hash": "canary", "stable-hash": "stable", "namespace": NAMESPACE, "window": "6s"}
            found = evaluate(url, query, args, time.time())
    finally:
        for server in servers.values():
            server.shutdown()
    values = {side: [m for m, rate in zip(MIDDLES, rates) for _ in range(rate)] for side, rates in RATES.items()}
    exact = ks_distance(values["canary"], values["stable"])
    print(
        f"\nprometheus KS distance {found}; canary_kit.policy.stats on the same values {exact}; threshold {threshold}"
    )
    assert found == [pytest.approx(exact, abs=1e-9)] and exact > threshold
