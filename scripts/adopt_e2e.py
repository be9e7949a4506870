"""scripts/adopt-e2e's steps, run by the fresh virtualenv's Python in a copy of the wine project (the current folder):
two versions trained and built into Bentos, `canary init`, `canary up`, 2,000 requests through nginx, `canary down`.

Only what that virtualenv has is used (the kit, the service's requirements): no test helper of this repository.
Prints the figures it judged on; exits 1 when a check fails.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
REQUESTS = 2000
CLIENTS = 8
WEIGHT = 10  # green's percent at the first start


def run(*argv: str, timeout: float = 300) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        sys.exit(f"adopt-e2e: FAILED: {' '.join(argv)} exited {result.returncode}\n{result.stdout}{result.stderr}")
    return result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_versions() -> list[str]:
    """Two versions of the model, each saved and built into its Bento right after (the service loads :latest)."""
    versions = []
    for version, recipe in (("1.0.0", []), ("1.1.0", ["--algorithm", "k_neighbors"])):
        print(run(str(BIN / "python"), "train.py", *recipe).strip())
        run(str(BIN / "bentoml"), "build", "--version", version)
        versions.append(version)
    return versions


def load(url: str) -> Counter:
    """REQUESTS requests from CLIENTS keep-alive clients that never resend; (status or error, version) counted."""
    from sklearn.datasets import load_wine

    data = load_wine()
    names = [n.replace("/", "_") for n in data.feature_names]
    bodies = [{"wines": [dict(zip(names, row))]} for row in data.data.tolist()]
    counts: Counter = Counter()
    lock, sent = threading.Lock(), [0]

    def client(number: int) -> None:
        transport = httpx.HTTPTransport(retries=0, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        with httpx.Client(transport=transport, timeout=15, trust_env=False) as session:
            while True:
                with lock:
                    if sent[0] >= REQUESTS:
                        return
                    sent[0] += 1
                    turn = sent[0]
                try:
                    r = session.post(f"{url}/classify", json=bodies[(turn + number) % len(bodies)])
                    key = (r.status_code, r.headers.get("x-model-version"))
                except httpx.HTTPError as exc:
                    key = (type(exc).__name__, None)
                with lock:
                    counts[key] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return counts


def main() -> int:
    blue, green = build_versions()
    print(run(str(BIN / "canary"), "init").strip())
    table = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["canary"]
    if (table.get("blue_version"), table.get("green_version")) != (blue, green):
        sys.exit(f"adopt-e2e: FAILED: canary init wrote versions {table}, not blue {blue} / green {green}")
    port = free_port()
    env = {**os.environ, "CANARY_PORT": str(port), "CANARY_BLUE_PORT": str(free_port())}
    env |= {"CANARY_GREEN_PORT": str(free_port()), "CANARY_GREEN_PORT_B": str(free_port())}
    up = subprocess.Popen([str(BIN / "canary"), "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, lines = time.monotonic() + 180, []
        while up.stdout is not None and time.monotonic() < deadline:
            line = up.stdout.readline().decode()
            if not line:
                break
            lines.append(line)
            if line.startswith("ready in"):
                break
        print("".join(lines).strip())
        if not lines or not lines[-1].startswith("ready in"):
            sys.exit("adopt-e2e: FAILED: canary up did not get ready")
        threading.Thread(target=lambda: up.stdout and up.stdout.read(), daemon=True).start()
        started = time.monotonic()
        counts = load(f"http://127.0.0.1:{port}")
        took = time.monotonic() - started
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
    total = sum(counts.values())
    failed = sum(n for (status, _), n in counts.items() if status != 200)
    by_version = Counter({version: n for (status, version), n in counts.items() if status == 200})
    share = by_version[green] / total if total else 0.0
    sigma = math.sqrt(total * WEIGHT / 100 * (1 - WEIGHT / 100))
    print(
        f"adopt-e2e: {total} requests in {took:.1f}s from {CLIENTS} keep-alive clients: {failed} failed; "
        f"blue {blue} {by_version[blue]}, green {green} {by_version[green]} ({share:.1%}; 10% set, "
        f"4.5 sigma = {4.5 * sigma:.0f} requests)"
    )
    if total != REQUESTS or failed:
        sys.exit(f"adopt-e2e: FAILED: {dict(counts)}")
    if abs(by_version[green] - total * WEIGHT / 100) > 4.5 * sigma:
        sys.exit(f"adopt-e2e: FAILED: green answered {by_version[green]} of {total}, outside the binomial bounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
