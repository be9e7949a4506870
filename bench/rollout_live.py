"""Live rollouts under steady load: the default rollout spec, with real nginx and `bentoml serve`, ships v1.2.0 (a
good candidate) and v1.9.0 (the weak one) against blue v1.0.0, each `--runs` times; results in
bench/results/rollout_live.json.

    python -m bench.rollout_live                 # 3 runs each (~6 min on 2 cores)
    python -m bench.rollout_live --runs 1 --spec my.yaml

Load: `--clients` keep-alive clients (6) that never resend, each posting one data row at a time from
data/data.csv in a random order, as fast as they are answered (about 1,000 requests/s in all on 2 cores). Per run:
how it ended and why, the seconds from `canary rollout`'s start to its end, and how many answers green gave during
the rollout (from nginx's log: for the weak version, the answers users got from it before it was stopped). The
store is the user's (BENTOML_HOME): v1.0.0, v1.2.0 and v1.9.0 must be trained (train_model.py; README).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.servers import ROOT, canary_settings, free_ports, log
from canary_kit.core.config import default_bentoml_home
from canary_kit.stacks.local import Stack
from penguin.features import STABLE_VERSION

CANDIDATES = {"v1.2.0": "good", "v1.9.0": "weak"}
OUT = ROOT / "bench" / "results" / "rollout_live.json"


class Load:
    """Clients that never resend, until stopped: (status or error, version) counted per request."""

    def __init__(self, url: str, clients: int, rows: list[dict]) -> None:
        self.url, self.rows, self.stop = url, rows, threading.Event()
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, args=(n,), daemon=True) for n in range(clients)]

    def client(self, number: int) -> None:
        order = random.Random(number).sample(range(len(self.rows)), len(self.rows))
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(transport=httpx.HTTPTransport(retries=0, limits=limits), timeout=15, trust_env=False) as c:
            turn = 0
            while not self.stop.is_set():
                row = self.rows[order[turn % len(order)]]
                turn += 1
                try:
                    r = c.post(f"{self.url}/predict", json={"instances": [row]})
                    key = (r.status_code, r.headers.get("x-model-version"))
                except httpx.HTTPError as exc:
                    key = (type(exc).__name__, None)
                with self.lock:
                    self.counts[key] += 1

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def data_rows() -> list[dict]:
    import pandas as pd

    frame = pd.read_csv(ROOT / "data" / "data.csv").drop(columns="target")
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def green_answers(access_log: Path, offset: int, version: str) -> int:
    """Answers `version` gave to the split's traffic since `offset` in nginx's access log."""
    with open(access_log, "rb") as handle:
        handle.seek(offset)
        entries = [json.loads(line) for line in handle if line.startswith(b"{")]
    return sum(1 for e in entries if e.get("version") == version and e.get("status") == 200 and not e.get("pin"))


def one_run(candidate: str, args: argparse.Namespace, rows: list[dict], work: Path) -> dict:
    settings = canary_settings(work / candidate, ROOT, default_bentoml_home(), free_ports(4))
    settings = settings.model_copy(update={"green_version": candidate, "green_weight": 0})
    with Stack(settings), Load(settings.url, args.clients, rows) as load:
        time.sleep(args.warmup)
        access = settings.state_dir / "logs" / "access.log"
        offset, before = access.stat().st_size, sum(load.counts.values())
        argv = [sys.executable, "-m", "canary_kit", "rollout", "--state-dir", str(settings.state_dir)]
        argv += ["--spec", str(args.spec)] if args.spec else []
        started = time.monotonic()
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        seconds = time.monotonic() - started
        during = sum(load.counts.values()) - before
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()
        found = {
            "candidate": candidate,
            "exit": done.returncode,
            "outcome": last.split(":")[0],
            "reason": last,
            "seconds": round(seconds, 1),
            "requests_during": during,
            "requests_per_s": round(during / seconds, 1) if seconds else None,
            "green_answers": green_answers(access, offset, candidate),
            "failed": sum(n for (status, _), n in load.counts.items() if status not in (200,)),
        }
    log(
        f"{candidate}: {found['outcome']} in {found['seconds']} s, {found['green_answers']} green answers, "
        f"{found['requests_per_s']} req/s, {found['failed']} failed"
    )
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="rollouts per candidate [3]")
    p.add_argument("--clients", type=int, default=6, help="keep-alive clients [6]")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before each rollout [5]")
    p.add_argument("--spec", type=Path, default=None, help="a rollout spec [the default one]")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds a rollout may take [900]")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    rows = data_rows()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="canary-rollout-live-") as folder:
        Path(folder).chmod(0o711)  # nginx's workers (www-data when run as root) go through it to the state folder
        for number in range(args.runs):
            for candidate in CANDIDATES:
                log(f"run {number + 1}/{args.runs}: blue {STABLE_VERSION}, green {candidate} ...")
                runs.append(one_run(candidate, args, rows, Path(folder) / f"run{number}"))
    summary = {}
    for candidate, kind in CANDIDATES.items():
        mine = [r for r in runs if r["candidate"] == candidate]
        summary[candidate] = {
            "kind": kind,
            "outcomes": dict(Counter(r["outcome"] for r in mine)),
            "seconds_median": statistics.median(r["seconds"] for r in mine),
            "green_answers_median": statistics.median(r["green_answers"] for r in mine),
            "requests_per_s_median": statistics.median(r["requests_per_s"] or 0 for r in mine),
            "failed": sum(r["failed"] for r in mine),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"clients": args.clients, "summary": summary, "runs": runs}, indent=2) + "\n")
    log(f"wrote {args.out}: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
