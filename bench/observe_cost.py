"""What reading each answer's predictions costs nginx, measured on nginx alone (no backend shares its CPU figure):

    python -m bench.observe_cost                                    # the templates as they are: reading on and off
    python -m bench.observe_cost --override /tmp/canary-observe.js  # and the same with another module (an A/B)
    python -m bench.observe_cost --override A/canary-public.inc.template --override A/canary-observe.js

The kit's nginx, rendered as `canary up` renders it, in front of an upstream that answers every POST with one
1,000-row columnar answer of the penguin service's form (another nginx: no Python runs). wrk loads each variant in
turn, round after round, the order rotated; the figure is the CPU time of the kit's nginx workers per request.
Variants: `off` (the endpoints name no JSON path: no body filter, no prediction line), `on` (as shipped) and, with
--override, `override` (reading on, those files in place of the kit's templates of their names, as a project's
`nginx/` overrides them: an njs module, the public server's template, ...). On a shared host bench.run's throughput
A/B of reading on and off moves by several percent between rounds, as much as the cost itself; this is the cost
where it is paid. Prints JSON: per variant, µs per request (median over rounds, and the range) and the median of
each round's difference to `off` with its quartiles.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.load import LUA
from bench.servers import HOST, free_ports
from canary_kit.core import routing
from canary_kit.core.config import Settings
from canary_kit.core.processes import Child
from canary_kit.stacks.backends import wait_ready
from canary_kit.stacks.nginx import NJS_MODULES, PACKAGED, LocalNginx, njs_module
from penguin.features import EXAMPLE, FEATURES

CLASSES = ["Adelie", "Chinstrap", "Gentoo"]
PATH = "/predict_columns"
UPSTREAM_JS = """
import fs from 'fs';
const ANSWER = fs.readFileSync('%s');
function answer(r) { r.headersOut['Content-Type'] = 'application/json'; r.return(200, ANSWER); }
export default { answer };
"""
UPSTREAM_CONF = """
daemon off;
worker_processes 1;
pid %(work)s/upstream.pid;
error_log %(work)s/upstream-error.log;
load_module %(module)s;
events { worker_connections 256; }
http {
    access_log off;
    js_import upstream from %(work)s/upstream.js;
    server {
        listen %(host)s:%(port)d;
        keepalive_requests 1000000;
        client_body_buffer_size 1m;
        location / { js_content upstream.answer; }
    }
}
"""


def answer(rows: int) -> bytes:
    """A columnar answer as the penguin service gives it: each row's class, then each class's probabilities."""
    rng = random.Random(0)
    proba = [[rng.random() for _ in CLASSES] for _ in range(rows)]
    proba = [[p / sum(row) for p in row] for row in proba]
    return json.dumps(
        {
            "predictions": [CLASSES[row.index(max(row))] for row in proba],
            "probabilities": {c: [row[i] for row in proba] for i, c in enumerate(CLASSES)},
            "model_version": "v1.0.0",
        },
        separators=(",", ":"),
    ).encode()


def start_nginx(name: str, work: Path, port: int, upstream: int, overrides: list[Path], read: bool) -> Child:
    """The kit's nginx on `port`, blue at `upstream`; each of `overrides` replaces the kit's template of its name,
    as a project's `nginx/` folder does."""
    project = work / f"project-{name}"
    (project / "nginx").mkdir(parents=True)
    if any(f.name in NJS_MODULES for f in overrides):  # njs finds an import beside its importer: all in the project
        for module in NJS_MODULES:
            shutil.copy(PACKAGED / module, project / "nginx" / module)
    for file in overrides:
        shutil.copy(file, project / "nginx" / file.name)
    ports = free_ports(2)
    unread = {} if read else {"endpoints": list(Settings().endpoints)}  # the same endpoints, no path: no filter
    settings = Settings(
        project_dir=project,
        state_dir=work / name,
        host=HOST,
        port=port,
        blue_port=upstream,
        green_port=ports[0],
        green_port_b=ports[1],
        **unread,
    )
    settings.state_dir.mkdir(mode=0o755)
    routing.write(settings.state_dir / routing.STATE_FILE, routing.RoutingState(green_weight=0, serial=1))
    nginx = LocalNginx(settings)
    nginx.write()
    child = Child(name, nginx.command(), work / f"{name}.log", die_with_parent=True)
    child.start()
    wait_ready([child], {name: f"http://{HOST}:{port}/_nginx/ping"}, 10)
    return child


def cpu(processes: list[psutil.Process]) -> float:
    """CPU seconds (user and system) these processes used so far."""
    return sum(t.user + t.system for t in (p.cpu_times() for p in processes))


def load(url: str, body: Path, connections: int, seconds: int) -> int:
    """Requests wrk got answered in `seconds` (every answer a 200, or it raises)."""
    done = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(LUA), url],
        env={"WRK_BODY_FILE": str(body), "PATH": "/usr/bin:/bin:/usr/local/bin"},
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}")
    found = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(found[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    if errors:
        raise RuntimeError(f"{url}: {errors} failed requests")
    return found["requests"]


def measure(args: argparse.Namespace, work: Path) -> dict:
    (work / "answer.json").write_bytes(answer(args.rows))
    body = work / "body.json"
    body.write_text(json.dumps({"columns": {f: [EXAMPLE[f]] * args.rows for f in FEATURES}}))
    ports = free_ports(4)
    (work / "upstream.js").write_text(UPSTREAM_JS % (work / "answer.json"))
    nginx_bin = Settings().nginx_bin
    values = {"work": work, "module": njs_module(nginx_bin), "host": HOST, "port": ports[0]}
    (work / "upstream.conf").write_text(UPSTREAM_CONF % values)
    argv = [nginx_bin, "-c", str(work / "upstream.conf")]
    upstream = Child("upstream", argv, work / "upstream.log", die_with_parent=True)
    children = [upstream]
    try:
        upstream.start()
        wait_ready([upstream], {"upstream": f"http://{HOST}:{ports[0]}/"}, 10)
        variants: dict[str, tuple[list[Path], bool]] = {"off": ([], False), "on": ([], True)}
        if args.override:
            variants["override"] = (args.override, True)
        urls = {}
        for (name, (overrides, read)), port in zip(variants.items(), ports[1:]):
            children.append(start_nginx(name, work, port, ports[0], overrides, read))
            urls[name] = f"http://{HOST}:{port}{PATH}"
        workers = {name: [p for p in child.tree() if p.pid != child.pid] for name, child in zip(urls, children[1:])}
        for name in urls:  # warm up
            load(urls[name], body, args.connections, 1)
        raw: dict[str, list[float]] = {name: [] for name in urls}
        names = list(urls)
        for number in range(args.rounds):
            for name in names[number % len(names) :] + names[: number % len(names)]:
                before = cpu(workers[name])
                requests = load(urls[name], body, args.connections, args.seconds)
                raw[name].append(round(1e6 * (cpu(workers[name]) - before) / requests, 1))
            print(f"round {number + 1}/{args.rounds}: " + ", ".join(f"{n} {raw[n][-1]} µs" for n in names), flush=True)
        for name in names:  # every answer read: as many prediction lines as answers (none when off)
            text = (work / name / "logs" / "access.log").read_bytes()
            answers, lines = text.count(b'"status":200,'), text.count(b"\nP ") + text.startswith(b"P ")
            print(f"{name}: {answers} answers (200), {lines} prediction lines in its access log", flush=True)
    finally:
        for child in reversed(children):
            child.stop()
    summary = {}
    for name in names:
        diff = [a - b for a, b in zip(raw[name], raw["off"])]
        quartiles = statistics.quantiles(diff, n=4) if len(diff) > 1 else [diff[0]] * 3
        summary[name] = {
            "us_per_request": round(statistics.median(raw[name]), 1),
            "range": [min(raw[name]), max(raw[name])],
            "over_off_us": round(statistics.median(diff), 1),
            "over_off_quartiles": [round(quartiles[0], 1), round(quartiles[2], 1)],
        }
    return {"rows": args.rows, "rounds": args.rounds, "seconds": args.seconds, "summary": summary, "raw": raw}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--override",
        "--js",
        type=Path,
        action="append",
        default=[],
        help="a file in place of the kit's template of its name (repeatable): measured beside the shipped ones",
    )
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--seconds", type=int, default=3, help="per variant and round")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--rows", type=int, default=1000)
    args = p.parse_args(argv)
    names = [file.name for file in args.override]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        p.error(f"--override: two files of one name ({', '.join(twice)})")
    for file in args.override:
        if not file.is_file():
            p.error(f"--override {file}: no such file")
        if not (PACKAGED / file.name).is_file():
            p.error(f"--override {file}: the kit has no template named {file.name} (see {PACKAGED})")
    work = Path(tempfile.mkdtemp(prefix="canary-observe-cost-"))
    work.chmod(0o755)  # nginx's workers (user nobody or www-data when started as root) reach the state folders
    try:
        started = time.monotonic()
        result = measure(args, work)
        result["elapsed_s"] = round(time.monotonic() - started, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k != "raw"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
