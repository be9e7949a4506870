#!/usr/bin/env python3
"""Bounded load through the canary's nginx for scripts/container-e2e (standard library + the example row).

    e2e_load.py split  --requests 1000 --green-share 0.10        # the weighted split, within ±4.5 sd
    e2e_load.py pin                                              # X-Canary: always/never reach green/blue
    e2e_load.py during --requests 400 --concurrency 4 --expect-after v1.0.0 -- canary rollback --compose

Every request goes to loopback only (the URL is refused otherwise), every loop is bounded in count and time,
and each response must name its version twice, in the X-Model-Version header and the model_version field,
the same both times. Prints one summary line per check and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import math
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

from penguin.features import EXAMPLE  # the row the service documents

BLUE, GREEN = "v1.0.0", "v1.1.0"
BODY = json.dumps({"instances": [EXAMPLE]}).encode()


def loopback(url: str) -> tuple[str, int, str]:
    """(host, port, path) of a loopback http URL; anything else is refused."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    ok = host == "localhost"
    try:
        ok = ok or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if parts.scheme != "http" or not ok:
        raise SystemExit(f"refusing {url!r}: only http to a loopback address is allowed")
    return host, parts.port or 80, parts.path or "/"


class Client:
    """One keepalive connection (or a fresh one per request) that returns (status, version, error). It never
    resends a request: one that gets no answer counts as failed, as it would for most API clients."""

    def __init__(self, url: str, timeout: float, keepalive: bool) -> None:
        self.host, self.port, self.path = loopback(url)
        self.timeout, self.keepalive, self.conn = timeout, keepalive, None

    def post(self, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if not self.keepalive:
            hdrs["Connection"] = "close"
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.request("POST", self.path, body=BODY, headers=hdrs)
            resp = self.conn.getresponse()
            raw = resp.read()
            header = resp.getheader("X-Model-Version") or ""
            if not self.keepalive or resp.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return 0, "", f"{type(exc).__name__}: {exc}"
        if resp.status != 200:
            return resp.status, header, f"HTTP {resp.status}: {raw[:200]!r}"
        try:
            field = json.loads(raw)["model_version"]
        except (ValueError, KeyError, TypeError):
            return resp.status, header, f"no model_version in body {raw[:200]!r}"
        if field != header:
            return resp.status, header, f"header says {header!r} but body says {field!r}"
        return resp.status, header, ""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def split(args: argparse.Namespace) -> int:
    """Requests from --concurrency keepalive clients; green's count must be within ±k sd of n·p."""
    counts: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    began = time.monotonic()
    deadline = began + args.time_limit
    sent = 0

    def worker() -> None:
        nonlocal sent
        client = Client(args.url, args.timeout, keepalive=True)
        while time.monotonic() < deadline:
            with lock:
                if sent >= args.requests:
                    break
                sent += 1
            _, version, error = client.post()
            with lock:
                if error:
                    errors.append(error)
                else:
                    counts[version] = counts.get(version, 0) + 1
        client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + args.timeout + 1)
    with lock:
        n = sum(counts.values()) + len(errors)
    p, k = args.green_share, args.sd
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    low, high = math.ceil(mean - k * sd), math.floor(mean + k * sd)
    green, blue = counts.get(GREEN, 0), counts.get(BLUE, 0)
    print(
        f"split: {n} requests ({args.concurrency} clients, {time.monotonic() - began:.1f}s): blue {BLUE} {blue}, green {GREEN} {green}, other {sum(counts.values()) - blue - green}, "
        f"failed {len(errors)}; green expected {mean:.0f} ± {k} sd = [{low}, {high}]"
    )
    problems = []
    if n < args.requests:
        problems.append(f"only {n} of {args.requests} requests within {args.time_limit:.0f}s")
    if errors:
        problems.append(f"{len(errors)} failed, first: {errors[0]}")
    if set(counts) - {BLUE, GREEN}:
        problems.append(f"unexpected versions {sorted(set(counts) - {BLUE, GREEN})}")
    if p > 0 and green == 0 or p < 1 and blue == 0:
        problems.append("both versions must answer")
    if not low <= green <= high:
        problems.append(f"green answered {green} times, outside [{low}, {high}]")
    return report("split", problems)


def pin(args: argparse.Namespace) -> int:
    """X-Canary: always must reach green, never must reach blue, every time."""
    client, problems = Client(args.url, args.timeout, keepalive=True), []
    for value, want in (("always", GREEN), ("never", BLUE)):
        got = [client.post({"X-Canary": value}) for _ in range(args.requests)]
        versions = sorted({v for _, v, e in got if not e})
        failed = [e for _, _, e in got if e]
        print(f"pin: X-Canary: {value} x{args.requests}: versions {versions}, failed {len(failed)}")
        if failed:
            problems.append(f"X-Canary {value}: {failed[0]}")
        if versions != [want]:
            problems.append(f"X-Canary {value} reached {versions}, expected [{want}]")
    client.close()
    return report("pin", problems)


def during(args: argparse.Namespace) -> int:
    """Concurrent clients; after --before requests run the command; after it returns only --expect-after answers."""
    records: list[tuple[float, float, str, str]] = []  # (sent, answered, version, error)
    lock = threading.Lock()
    stop = threading.Event()
    deadline = time.monotonic() + args.time_limit

    began, issued = time.monotonic(), 0

    def pace() -> None:
        """At most --rate requests per second from all clients together (0: no limit)."""
        nonlocal issued
        if args.rate <= 0:
            return
        with lock:
            slot = began + issued / args.rate
            issued += 1
        time.sleep(max(0.0, min(slot, deadline) - time.monotonic()))

    def worker() -> None:
        client = Client(args.url, args.timeout, keepalive=args.keepalive)
        while not stop.is_set() and time.monotonic() < deadline:
            pace()
            sent = time.monotonic()
            _, version, error = client.post()
            with lock:
                if len(records) >= args.requests:
                    break
                records.append((sent, time.monotonic(), version, error))
        client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    while time.monotonic() < deadline and len(records) < args.before:
        time.sleep(0.01)
    started = time.monotonic()
    try:
        proc = subprocess.run(args.command, capture_output=True, text=True, timeout=args.command_timeout)
        rc, out = proc.returncode, (proc.stdout + proc.stderr).strip()
    except subprocess.TimeoutExpired:
        rc, out = -1, f"timed out after {args.command_timeout}s"
    returned = time.monotonic()
    # keep going until enough requests were sent after the command returned (bounded by count and time)
    while time.monotonic() < deadline and len(records) < args.requests:
        with lock:
            after = sum(1 for r in records if r[0] > returned)
        if after >= args.min_after:
            break
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(args.timeout + 1)

    with lock:
        done = list(records)
    failed = [r for r in done if r[3]]
    after = [r for r in done if r[0] > returned]
    before = [r for r in done if r[1] < started]
    wrong_after = [r for r in after if not r[3] and r[2] != args.expect_after]
    def versions(records: list) -> str:
        counts: dict[str, int] = {}
        for r in records:
            if not r[3]:
                counts[r[2]] = counts.get(r[2], 0) + 1
        return ", ".join(f"{v} {n}" for v, n in sorted(counts.items())) or "none"

    name = " ".join([args.command[0].rsplit("/", 1)[-1], *args.command[1:2]])
    print(
        f"during `{name}` (rc {rc}, {returned - started:.2f}s): {len(done)} requests by "
        f"{args.concurrency} clients at ≤{args.rate:g}/s ({'keepalive' if args.keepalive else 'a connection per request'}), "
        f"failed {len(failed)}; before it: {versions(before)}; sent after it returned: {len(after)}, {versions(after)}"
    )
    if out:
        print("  command said: " + out.replace("\n", "\n  command said: "))
    problems = []
    if rc != 0:
        problems.append(f"command exited {rc}")
    if failed:
        problems.append(f"{len(failed)} failed requests, first: {failed[0][3]}")
    if len(after) < args.min_after:
        problems.append(f"only {len(after)} requests after the command returned (wanted {args.min_after})")
    if wrong_after:
        first = min(r[0] for r in wrong_after) - returned
        problems.append(
            f"{len(wrong_after)} answers from other than {args.expect_after} after the command returned "
            f"(first sent {first * 1000:.0f} ms after)"
        )
    return report(name, problems)


def report(name: str, problems: list[str]) -> int:
    for problem in problems:
        print(f"  FAIL {name}: {problem}")
    print(f"  {'ok' if not problems else 'FAILED'}: {name}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/predict")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds for the whole check")
    sub = parser.add_subparsers(dest="check", required=True)
    s = sub.add_parser("split")
    s.add_argument("--requests", type=int, default=1000)
    s.add_argument("--green-share", type=float, default=0.10)
    s.add_argument("--concurrency", type=int, default=1)
    s.add_argument("--sd", type=float, default=4.5, help="allowed distance from the mean, in standard deviations")
    p = sub.add_parser("pin")
    p.add_argument("--requests", type=int, default=20)
    d = sub.add_parser("during")
    d.add_argument("--requests", type=int, default=400, help="at most this many requests in all")
    d.add_argument("--concurrency", type=int, default=4)
    d.add_argument("--before", type=int, default=100, help="requests answered before the command runs")
    d.add_argument("--min-after", type=int, default=100, help="requests sent after the command returned")
    d.add_argument("--expect-after", required=True, help="the only version allowed after the command returned")
    d.add_argument("--rate", type=float, default=50.0, help="requests per second from all clients (0: no limit)")
    d.add_argument("--keepalive", action="store_true", help="reuse connections (default: one per request)")
    d.add_argument("--command-timeout", type=float, default=60.0)
    d.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.check == "during":
        if args.command[:1] == ["--"]:
            args.command = args.command[1:]
        if not args.command:
            parser.error("during needs a command after --")
    return {"split": split, "pin": pin, "during": during}[args.check](args)


if __name__ == "__main__":
    sys.exit(main())
