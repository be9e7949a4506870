"""Locust load for any deployment of the penguin classifier, counting answers per model version.

    locust -f bench/locustfile.py -H http://localhost:8000                  # web UI on :8089
    locust -f bench/locustfile.py -H http://localhost:8000 --headless -u 20 -r 5 -t 60s

Each user POSTs single-row (and, 1 time in 10, 100-row) predictions. Requests are named by the version that
answered (the X-Model-Version header), so the statistics table shows one row per version, e.g.
`/predict [v1.0.0]` and `/predict [v1.1.0]`, with their own latency percentiles; a summary of the split is
printed when the test stops. Set PENGUIN_USER_IDS=1 to send an X-User-ID per simulated user (sticky cohorts).
"""

from __future__ import annotations

import os
import random
import threading
import uuid
from collections import Counter
from typing import get_args

from locust import HttpUser, between, events, task

from penguin.features import EXAMPLE, Island, Sex

ISLANDS = get_args(Island)
VERSIONS: Counter[str] = Counter()
_lock = threading.Lock()


def random_row() -> dict:
    """A plausible penguin, so the load is not one cached answer."""
    return {
        **EXAMPLE,
        "island": random.choice(ISLANDS),
        "bill_length_mm": round(random.uniform(32, 60), 1),
        "bill_depth_mm": round(random.uniform(13, 22), 1),
        "flipper_length_mm": float(random.randint(172, 231)),
        "body_mass_g": float(random.randrange(2700, 6300, 50)),
        "sex": random.choice((*get_args(Sex), None)),
    }


class CanaryUser(HttpUser):
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.headers = {"X-User-ID": uuid.uuid4().hex} if os.environ.get("PENGUIN_USER_IDS") == "1" else {}

    def predict(self, rows: int, label: str) -> None:
        body = {"instances": [random_row() for _ in range(rows)]}
        with self.client.post("/predict", json=body, headers=self.headers, catch_response=True, name=label) as resp:
            version = resp.headers.get("X-Model-Version", "no version header")
            resp.request_meta["name"] = f"{label} [{version}]"
            with _lock:
                VERSIONS[version] += 1
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
            elif len(resp.json().get("predictions", ())) != rows:
                resp.failure("wrong number of predictions")

    @task(9)
    def single_row(self) -> None:
        self.predict(1, "/predict")

    @task(1)
    def batch_of_100(self) -> None:
        self.predict(100, "/predict 100 rows")


@events.test_stop.add_listener
def report_split(environment, **_) -> None:
    with _lock:
        total = sum(VERSIONS.values())
        if total:
            split = ", ".join(f"{v}: {n} ({100 * n / total:.1f}%)" for v, n in VERSIONS.most_common())
            print(f"\nanswers by X-Model-Version ({total} requests): {split}")
