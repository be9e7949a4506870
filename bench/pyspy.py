"""bench.run's profile of the service's worker under load: py-spy's samples, summed into named parts."""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.load import run_wrk
from bench.servers import Subject, log, worker_pids

PROFILE_KEYS = {
    "the predict method (service.py)": "PenguinClassifier.predict",
    "  onnxruntime Session.run": "Session.run",
    "request parsing + pydantic validation": "from_http_request",
    "response serialisation": "to_http_response",
    "BentoML middleware (otel, metrics, timeout)": "bentoml/_internal/server/http",
    "OpenTelemetry": "opentelemetry",
    "thread hand-off (to_thread / call_soon_threadsafe)": "call_soon_threadsafe",
    "uvicorn httptools protocol": "httptools_impl.py",
    "uvicorn h11 protocol": "h11_impl.py",
}


IDLE_LEAVES = {"select", "poll", "wait", "_wait_for_tstate_lock", "acquire", "sleep"}


def summarize_profile(raw: Path, top: int = 20) -> dict:
    """py-spy's collapsed stacks -> inclusive share of the worker's non-idle samples for named parts, and top frames."""
    inclusive: collections.Counter[str] = collections.Counter()
    keys: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        leaf = frames[-1].split(" (")[0].rsplit(".", 1)[-1]
        if leaf in IDLE_LEAVES:
            continue  # idle: the event loop waiting for sockets, threads waiting for work
        total += n
        names = {re.sub(r":\d+\)$", ")", f) for f in frames}
        for name in names:
            inclusive[name] += n
        for label, needle in PROFILE_KEYS.items():
            if any(needle in f for f in frames):
                keys[label] += n

    def pct(n: int) -> float:
        return round(100 * n / max(1, total), 1)

    generic = ("threading.py", "runpy", "click/core.py", "asyncio/", "uvicorn/server.py", "_compat.py", "<module>")
    frames = [(name, pct(n)) for name, n in inclusive.most_common() if not any(g in name for g in generic)]
    return {
        "busy_samples": total,
        "parts_pct": {label: pct(keys[label]) for label in PROFILE_KEYS},
        "top_inclusive_pct": frames[:top],
    }


def profile_worker(subject: Subject, body: Path, seconds: int, work: Path) -> dict | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    workers = worker_pids(subject.children[0])
    if not Path(spy).exists() or not workers:
        log("profile skipped: py-spy or the bentoml worker not found")
        return None
    raw = work / f"profile-{subject.name}.folded"
    record = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(workers[0]),
            "--duration",
            str(seconds),
            "--rate",
            "200",
            "--nonblocking",
            "--function",
            "--format",
            "raw",
            "--output",
            str(raw),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(0.5)
        load = run_wrk(subject, body, 32, seconds)
        out, _ = record.communicate(timeout=seconds + 30)
    finally:
        if record.poll() is None:
            record.kill()
            record.wait()
    if not raw.exists():
        log(f"profile failed: {out.strip()[-300:]}")
        return None
    dump = subprocess.run(
        [spy, "dump", "--pid", str(workers[0]), "--nonblocking"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return {
        "subject": subject.name,
        "worker_pid": workers[0],
        "load": load,
        "folded": str(raw),
        **summarize_profile(raw),
        "dump_idle": dump.stdout.strip().splitlines()[:30],
    }
