"""How each backend worker writes its answers: head and body in one write, or the head alone first.

nginx can fail a request over to the other version only while it has forwarded nothing of the answer; a head that
leaves alone, ahead of its body, opens a window in which a worker's crash cuts the answer. This script starts the
canary stack, loads it with wrk, traces the workers' write() calls with `perf trace` for a few seconds, and reports
the writes per answer, how many heads left alone, and how long those heads waited for their bodies.

    BENTOML_HOME=~/bentoml .venv/bin/python bench/response_writes.py     # needs perf (apt-get install linux-perf)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
from targets import LUA, ROOT, canary_settings, free_ports, log, write_bodies

from canary_kit.stack import Stack  # noqa: E402

TRACE_SECONDS, CONNECTIONS = 3, 8
WRITE = re.compile(r"^\s*(\d+\.\d+) \(.*?\): \S+?/(\d+) write\(fd: (\d+), buf: \w+, count: (\d+)")


def worker_threads(stack: Stack) -> list[int]:
    """Every thread of blue's and green's processes (the `bentoml serve` supervisor and its worker)."""
    pids = [c.proc.pid for c in stack.children if c.name != "nginx"]
    procs = [psutil.Process(p) for p in pids] + [q for p in pids for q in psutil.Process(p).children(recursive=True)]
    return [t.id for p in procs for t in p.threads()]


def answers(trace: str) -> dict:
    """Pair each answer's writes per (thread, fd): an HTTP head is recognised by its size (200-400 bytes here)."""
    writes = [(float(m[1]), (m[2], m[3]), int(m[4])) for m in map(WRITE.match, trace.splitlines()) if m]
    sizes = Counter(size for _, _, size in writes)
    head_size = 201  # uvicorn's head for a single-row answer: status line, date, content-length, type, version
    alone = [(t, key) for t, key, size in writes if size == head_size]
    gaps = []
    for t, key in alone:
        after = next((u for u, k, _ in writes if k == key and u > t), None)
        if after is not None:
            gaps.append((after - t) * 1000)  # perf prints milliseconds; report microseconds
    gaps.sort()
    pick = (lambda q: round(gaps[int(q * (len(gaps) - 1))], 1)) if gaps else (lambda q: None)
    return {"writes": len(writes), "by_size": dict(sizes.most_common(4)), "heads_alone": len(alone),
            "head_to_body_us": {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": pick(1.0)}}


def main() -> int:
    missing = [tool for tool in ("perf", "wrk", "nginx") if shutil.which(tool) is None]
    if missing:
        print(f"needs {', '.join(missing)} (apt-get install linux-perf wrk nginx)", file=sys.stderr)
        return 1
    store = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser().absolute()
    work = Path(tempfile.mkdtemp(prefix="response-writes-"))
    stack = Stack(canary_settings(work / "canary", ROOT, store, free_ports(4))).start()
    try:
        body = write_bodies(work, [1])[1]
        argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{TRACE_SECONDS + 3}s", "-s", str(LUA), f"{stack.settings.url}/predict"]
        load = subprocess.Popen(argv, env={**os.environ, "WRK_BODY_FILE": str(body)}, stdout=subprocess.DEVNULL)
        time.sleep(1)  # past the first connections
        log(f"tracing the workers' writes for {TRACE_SECONDS} s under {CONNECTIONS} keep-alive connections")
        tids = ",".join(map(str, worker_threads(stack)))
        perf = subprocess.run(["perf", "trace", "-e", "write", "-t", tids, "--", "sleep", str(TRACE_SECONDS)],
                              capture_output=True, text=True, timeout=TRACE_SECONDS + 30)
        load.wait(TRACE_SECONDS + 30)
        found = answers(perf.stderr + perf.stdout)
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    log(f"{found['writes']} writes by size {found['by_size']}; heads written alone: {found['heads_alone']}; "
        f"head to body (us): {found['head_to_body_us']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
