"""How each backend worker writes its answers: head and body in one write, or the head alone first.

nginx can fail a request over to the other version only while it has forwarded nothing of the answer; a head that
leaves alone, ahead of its body, opens a window in which a worker's crash cuts the answer. This script starts the
canary stack, loads it with wrk, traces the workers' write() calls with strace for a few seconds, and counts the
answers written whole (head and body in one write) and the heads written alone, with how long those waited for
their bodies (strace slows every call, so the waits are longer than untraced; the counts are exact).

    BENTOML_HOME=~/bentoml .venv/bin/python -m bench.response_writes     # needs strace (apt-get install strace)
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

from bench.load import LUA, write_bodies
from bench.servers import ROOT, canary_settings, free_ports, log, processes
from canary_kit.stacks.local import Stack

TRACE_SECONDS, CONNECTIONS = 3, 8
# [pid 123] 1795720442.629981 write(24, "HTTP/1.1 200 OK\r\n...\r\n\r\n", 201) = 201
WRITE = re.compile(r'^(?:\[pid\s+(\d+)\] )?(\d+\.\d+) write\((\d+), "(.*)"(?:\.\.\.)?, \d+\) = \d+$')


def backend_pids(stack: Stack) -> list[int]:
    """blue's and green's processes: each `bentoml serve` supervisor and its worker."""
    return [p.pid for p in processes([c for c in stack.children if c.name != "nginx"])]


def answers(trace: str) -> dict:
    """Classify the traced writes: a whole answer (head and body), a head alone, or anything else (a body alone)."""
    writes = [(float(m[2]), (m[1], m[3]), m[4]) for m in map(WRITE.match, trace.splitlines()) if m]
    if not writes:
        raise SystemExit(f"no write() calls traced; strace said: {trace[-500:]}")
    kinds, gaps, waiting = Counter(), [], {}
    for t, key, text in writes:
        if key in waiting:  # the body of a head written alone
            gaps.append((t - waiting.pop(key)) * 1e6)
        if not text.startswith("HTTP/1.1 "):
            kinds["other"] += 1
        elif text.endswith("\\r\\n\\r\\n"):  # strace prints CR LF as the escapes \r\n
            kinds["head alone"] += 1
            waiting[key] = t
        else:
            kinds["whole answer"] += 1
    gaps.sort()
    pick = (lambda q: round(gaps[int(q * (len(gaps) - 1))])) if gaps else (lambda q: None)
    return {
        "writes": len(writes),
        **{k: kinds[k] for k in ("whole answer", "head alone", "other")},
        "head_to_body_us": {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": pick(1.0)},
    }


def main() -> int:
    missing = [tool for tool in ("strace", "wrk", "nginx") if shutil.which(tool) is None]
    if missing:
        print(f"needs {', '.join(missing)} (apt-get install strace wrk nginx)", file=sys.stderr)
        return 1
    store = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser().absolute()
    work = Path(tempfile.mkdtemp(prefix="response-writes-"))
    stack = Stack(canary_settings(work / "canary", ROOT, store, free_ports(4))).start()
    load = None
    try:
        body = write_bodies(work, [1])[1]
        argv = [
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{TRACE_SECONDS + 3}s",
            "-s",
            str(LUA),
            f"{stack.settings.url}/predict",
        ]
        load = subprocess.Popen(argv, env={**os.environ, "WRK_BODY_FILE": str(body)}, stdout=subprocess.DEVNULL)
        time.sleep(1)  # past the first connections
        log(f"tracing the workers' writes for {TRACE_SECONDS} s under {CONNECTIONS} keep-alive connections")
        argv = [
            "timeout",
            "-s",
            "INT",
            str(TRACE_SECONDS),
            "strace",
            "-f",
            "-ttt",
            "-s",
            "400",
            "-e",
            "trace=write",
            "-e",
            "signal=none",
            *[arg for pid in backend_pids(stack) for arg in ("-p", str(pid))],
        ]
        trace = subprocess.run(argv, capture_output=True, text=True, timeout=TRACE_SECONDS + 30, check=False).stderr
        found = answers(trace)
    finally:
        if load is not None:
            load.kill()
            load.wait(10)
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    log(
        f"{found['writes']} writes: {found['whole answer']} whole answers, {found['head alone']} heads alone, "
        f"{found['other']} other; a head alone waited for its body (us, under strace): {found['head_to_body_us']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
