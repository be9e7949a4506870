"""What recording the prediction metrics costs per answer, measured in process (microseconds, no network):

    python -m bench.prediction_metrics_cost          # prints JSON: µs per 1-row and per 1,000-row answer

The service records each answer's classes and confidences (penguin/prediction_metrics.py) in prometheus_client's
multiprocess mode, as under `bentoml serve`. On a shared host a throughput A/B of the canary with the metrics on
and off moves by ±30% between rounds, far more than this cost; bench.run sets this beside the A/B (its
`quality_metrics_*` ratios) so that the cost is read from a measurement the host's noise does not swamp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from bench.servers import ROOT


def measure(repeats: int = 20000) -> dict:
    import numpy as np

    from penguin.prediction_metrics import PredictionMetrics

    metrics = PredictionMetrics(["Adelie", "Chinstrap", "Gentoo"])
    rng = np.random.default_rng(0)
    proba = rng.dirichlet([1, 1, 1], size=1000)
    out = {}
    for rows, count in ((1, repeats), (1000, repeats // 10)):
        block = proba[:rows]
        top = block.argmax(axis=1)  # the service computes the classes whether it exports metrics or not
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(count):  # what service.py's predicted() adds: each row's top probability, recorded
                metrics.record_rows(top, block)
            timings.append((time.perf_counter() - started) / count * 1e6)
        out[f"us_per_answer_{rows}row{'s' if rows > 1 else ''}"] = round(sorted(timings)[2], 2)
    return out


def main() -> int:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:  # as under bentoml serve; set before prometheus_client loads
        with tempfile.TemporaryDirectory() as folder:
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder}
            argv = [sys.executable, "-m", "bench.prediction_metrics_cost"]
            return subprocess.run(argv, env=env, cwd=ROOT, check=False).returncode
    print(json.dumps(measure()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
