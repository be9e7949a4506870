"""Benchmark the canary kit side by side with a FastAPI baseline; results in bench/results/.

    make bench                                    # the full run (~15 min on 2 cores), = python bench/run.py
    python bench/run.py --quick                   # smoke run (~2 min), results in bench/results/quick/
    python bench/run.py --duration 5 --repeats 3  # choose the time per point and the rounds
    python bench/run.py --extra-service before=/tmp/old-checkout   # A/B another service.py (a project folder)

What runs, all on 127.0.0.1 and all started (and always stopped) by this script:
  baseline   bench/baseline_app.py: FastAPI + uvicorn, one worker, penguin_classifier:v1.0.0 (benchmark only)
  service    our service.py under `bentoml serve`, v1.0.0, hit directly on its loopback port
  canary     the whole canary path from canary_kit.stack.Stack: nginx 90/10 -> blue v1.0.0 / green v1.1.0
  nginx      floor: the same nginx answering GET /_nginx/ping without an upstream
  in-process floor: the models' predict_proba on a ready DataFrame, in this process, one thread

Load comes from wrk (Debian) with bench/wrk_post.lua. Every point is measured `--repeats` times, interleaved:
round 1 runs every target once at every point, round 2 again with the target order rotated, and so on, so drift
on a shared machine shows up as spread, not as a bias against whoever ran last. Tables show medians over rounds.
Also measured: the canary stack's cold start (Stack.start until blue, green and nginx answer) and the memory of
every process each target runs, and (unless --no-profile) a py-spy profile of the service's worker under load.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from canary_kit.config import CanaryError, Settings  # noqa: E402
from penguin.features import CANDIDATE_VERSION, EXAMPLE, FEATURES, MODEL_NAME, STABLE_VERSION  # noqa: E402
from canary_kit.stack import Child, Stack, port_in_use, wait_ready  # noqa: E402

LUA = BENCH / "wrk_post.lua"
HOST = "127.0.0.1"
HTTP_TARGETS = ("baseline", "service", "canary")
NGINX_FLOOR = "nginx"
GREEN_WEIGHT = 10
GOALS = {
    "canary_vs_baseline_rps_c32": 1.0,
    "canary_vs_service_rps_c32": 0.95,
    "canary_batch1000_vs_floor": 0.5,
    "cold_start_s": 10.0,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=None, help="seconds of load per point and round [10; quick 2]")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds per point (medians) [3]")
    p.add_argument("--quick", action="store_true", help="short smoke run: 2 s points, 1 cold start, no profile")
    p.add_argument("--concurrency", default="1,8,32", help="connections for the single-row points [1,8,32]")
    p.add_argument("--batches", default="1,100,1000", help="rows per request for the rows/s points [1,100,1000]")
    p.add_argument("--batch-concurrency", type=int, default=8, help="connections for the batch points [8]")
    p.add_argument("--cold-starts", type=int, default=None, help="canary stack cold starts to time [3; quick 1]")
    p.add_argument("--warmup", type=int, default=2, help="seconds of unrecorded load per target first [2]")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of the service worker")
    p.add_argument("--profile-seconds", type=int, default=10, help="length of the profiled load [10]")
    p.add_argument("--extra-service", action="append", default=[], metavar="NAME=DIR",
                   help="also measure, as service@NAME, the service.py of another project folder (e.g. `git archive`)")
    p.add_argument("--extra-canary", action="append", default=[], metavar="NAME=DIR",
                   help="also measure, as canary@NAME, a second canary stack run from another project folder")
    p.add_argument("--extra-canary-workers", type=int, default=None, metavar="N",
                   help="also measure, as canary@wN, a canary stack whose backends run N workers each "
                        "(BENTOML_CONFIG_OPTIONS, no code change) [2; quick: 0 = off]")
    p.add_argument("--targets", default=None, help="measure only these (comma-separated names), e.g. for A/B runs")
    p.add_argument("--out", type=Path, default=None, help="results folder [bench/results; quick: bench/results/quick]")
    p.add_argument("--max-minutes", type=float, default=30.0, help="stop starting new rounds after this long [30]")
    args = p.parse_args(argv)
    args.duration = args.duration or (2 if args.quick else 10)
    args.repeats = args.repeats or 3
    args.cold_starts = args.cold_starts if args.cold_starts is not None else (1 if args.quick else 3)
    args.profile = not (args.no_profile or args.quick)
    args.out = args.out or (BENCH / "results" / "quick" if args.quick else BENCH / "results")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    extras = {}
    for kind, specs in (("service", args.extra_service), ("canary", args.extra_canary)):
        for spec in specs:
            name, _, folder = spec.partition("=")
            if not name or not (Path(folder) / "service.py").is_file():
                p.error(f"--extra-{kind} wants NAME=DIR with DIR/service.py, got {spec!r}")
            extras[f"{kind}@{name}"] = Path(folder).resolve()
    if args.extra_canary_workers is None:
        args.extra_canary_workers = 0 if args.quick else 2
    if args.extra_canary_workers > 1:
        extras[f"canary@w{args.extra_canary_workers}"] = ROOT
    args.extras = extras
    if args.duration < 1 or args.repeats < 1 or min(args.concurrency + args.batches) < 1:
        p.error("durations, repeats, connections and batch sizes must be at least 1")
    return args


# ---------------------------------------------------------------------------------------------------------------
# processes


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (the kernel's choice), checked again before use by the Stack's preflight."""
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def private_home(folder: Path, store: Path) -> Path:
    """A BENTOML_HOME of its own (bentoml serve wipes its metrics folder) sharing the model store by symlink."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("models", "bentos"):
        (store / name).mkdir(parents=True, exist_ok=True)
        link = folder / name
        if not link.exists():
            link.symlink_to(store / name, target_is_directory=True)
    return folder


def bentoml_bin() -> str:
    exe = Path(sys.executable).with_name("bentoml")
    return str(exe) if exe.exists() else "bentoml"


def service_child(name: str, project: Path, port: int, work: Path, store: Path) -> Child:
    argv = [bentoml_bin(), "serve", "service:PenguinClassifier", "--arg", f"model_version={STABLE_VERSION}",
            "--host", HOST, "--port", str(port)]
    env = {"BENTOML_HOME": str(private_home(work / name / "bentoml", store)), "BENTOML_DO_NOT_TRACK": "true",
           "PYTHONUNBUFFERED": "1"}
    return Child(name, argv, work / "logs" / f"{name}.log", env, project)


def baseline_child(port: int, work: Path, model_path: Path) -> Child:
    argv = [sys.executable, "-m", "uvicorn", "baseline_app:app", "--app-dir", str(BENCH), "--host", HOST,
            "--port", str(port), "--workers", "1", "--no-access-log"]
    env = {"BASELINE_MODEL_PATH": str(model_path), "BASELINE_MODEL_VERSION": STABLE_VERSION,
           "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return Child("baseline", argv, work / "logs" / "baseline.log", env, ROOT)


@contextlib.contextmanager
def environment(**values: str | None):
    """Set (or, with None, leave alone) environment variables while processes are started, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def memory_of(pids: list[int]) -> dict:
    """RSS (what `ps` shows; shared pages counted in every process) and PSS (shared pages split) in MiB."""
    rss = pss = uss = 0
    count = 0
    for pid in pids:
        for proc in process_tree(pid):
            with contextlib.suppress(psutil.Error):
                info = proc.memory_full_info()
                rss, pss, uss, count = rss + info.rss, pss + getattr(info, "pss", 0), uss + info.uss, count + 1
    mib = 1024 * 1024
    return {"rss_mib": round(rss / mib, 1), "pss_mib": round(pss / mib, 1), "uss_mib": round(uss / mib, 1),
            "processes": count}


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        for proc in process_tree(pid):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all processes, ours and other people's), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def worker_pids(root_pid: int) -> list[int]:
    return [p.pid for p in process_tree(root_pid)
            if any("_bentoml_impl.worker.service" in part for part in (p.cmdline() if p.is_running() else []))]


# ---------------------------------------------------------------------------------------------------------------
# load


@dataclass
class Target:
    name: str
    url: str
    pids: list[int]
    method: str = "POST"
    parts: dict[str, list[int]] = field(default_factory=dict)  # CPU reported per part too (canary: blue, green, nginx)

    def path(self) -> str:
        return "/_nginx/ping" if self.method == "GET" else "/predict"


def run_wrk(target: Target, body: Path | None, connections: int, duration: int) -> dict:
    """One wrk run; requests/s, latency percentiles (ms), errors, and the CPU the target's processes used."""
    argv = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s",
            "-s", str(LUA), target.url + target.path()]
    env = {**os.environ, "WRK_BODY_FILE": str(body) if body and target.method == "POST" else ""}
    parts0 = {name: cpu_seconds(pids) for name, pids in target.parts.items()}
    cpu0, busy0, wall0 = cpu_seconds(target.pids), machine_busy_seconds(), time.monotonic()
    usage0 = os.times()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 60)
    usage1 = os.times()
    cpu1, busy1, wall1 = cpu_seconds(target.pids), machine_busy_seconds(), time.monotonic()
    parts = {name: 1000 * (cpu_seconds(pids) - parts0[name]) for name, pids in target.parts.items()}
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    w = json.loads(line.removeprefix("WRK_JSON "))
    seconds = w["duration_us"] / 1e6
    wrk_cpu = (usage1.children_user - usage0.children_user) + (usage1.children_system - usage0.children_system)
    target_cpu = cpu1 - cpu0
    other = max(0.0, (busy1 - busy0) - target_cpu - wrk_cpu)
    errors = w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["status_errors"] + w["timeouts"]
    return {
        "rps": round(w["requests"] / seconds, 1),
        "p50_ms": round(w["p50_us"] / 1000, 2),
        "p99_ms": round(w["p99_us"] / 1000, 2),
        "p90_ms": round(w["p90_us"] / 1000, 2),
        "max_ms": round(w["lat_max_us"] / 1000, 2),
        "requests": w["requests"],
        "errors": errors,
        "non_2xx": w["status_errors"],
        "cpu_ms_per_req": round(1000 * target_cpu / max(1, w["requests"]), 3),
        **({"cpu_ms_per_req_by_part": {k: round(v / max(1, w["requests"]), 3) for k, v in parts.items()}}
           if parts else {}),
        "wrk_cpu_pct": round(100 * wrk_cpu / (wall1 - wall0), 1),
        "other_cpu_pct": round(100 * other / (wall1 - wall0), 1),
    }


def write_bodies(folder: Path, sizes: list[int]) -> dict[int, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    bodies = {}
    for n in sorted(set(sizes) | {1}):
        path = folder / f"body-{n}.json"
        path.write_text(json.dumps({"instances": [EXAMPLE] * n}))
        bodies[n] = path
    return bodies


def check_targets(targets: dict[str, Target], bodies: dict[int, Path]) -> dict:
    """Every target answers 200 with the same predictions for the example before any load is recorded."""
    import httpx

    seen = {}
    with httpx.Client(timeout=10, trust_env=False) as client:
        for name, t in targets.items():
            if t.method == "GET":
                r = client.get(t.url + t.path())
                if r.status_code != 200:
                    raise RuntimeError(f"{name}: GET {t.path()} -> {r.status_code}")
                continue
            for n in (1, max(bodies)):
                r = client.post(t.url + "/predict", content=bodies[n].read_bytes(),
                                headers={"content-type": "application/json"})
                if r.status_code != 200:
                    raise RuntimeError(f"{name}: POST /predict ({n} rows) -> {r.status_code}: {r.text[:300]}")
                data = r.json()
                if len(data["predictions"]) != n or "x-model-version" not in r.headers:
                    raise RuntimeError(f"{name}: unexpected answer {r.text[:300]}")
            if r.headers["x-model-version"] == STABLE_VERSION:
                seen[name] = (data["predictions"][0], data["probabilities"][0])
    first = next(iter(seen.values()))
    differ = [name for name, answer in seen.items() if answer != first]
    if differ:
        raise RuntimeError(f"targets disagree on the example: {differ} vs {first}")
    return {"example_prediction": first[0], "example_probabilities": first[1]}


# ---------------------------------------------------------------------------------------------------------------
# in-process floor


def model_file(store: Path, version: str) -> Path:
    return store / "models" / MODEL_NAME / version / "model.joblib"


def load_pipelines(store: Path) -> dict[str, object]:
    import joblib

    return {v: joblib.load(model_file(store, v)) for v in (STABLE_VERSION, CANDIDATE_VERSION)}


def predict_floor(pipelines: dict[str, object], sizes: list[int]) -> dict[str, dict[str, float]]:
    """Rows/s of predict_proba on a ready DataFrame, one thread (OpenMP limited to 1), best of 5 timings.

    This times a function call in-process, not HTTP: it is the floor the served numbers are compared with.
    """
    import pandas as pd
    from threadpoolctl import threadpool_limits

    out: dict[str, dict[str, float]] = {}
    with threadpool_limits(limits=1):
        for version, pipeline in pipelines.items():
            for n in sizes:
                frame = pd.DataFrame([EXAMPLE] * n, columns=list(FEATURES))
                timer = timeit.Timer(lambda: pipeline.predict_proba(frame))
                once = min(timer.repeat(repeat=2, number=1))
                number = max(1, min(200, int(0.1 / max(once, 1e-6))))
                best = min(timer.repeat(repeat=5, number=number)) / number
                out.setdefault(version, {})[str(n)] = round(n / best, 1)
    return out


# ---------------------------------------------------------------------------------------------------------------
# canary stack


def canary_settings(state: Path, project: Path, store: Path, ports: list[int]) -> Settings:
    return Settings(project_dir=project, state_dir=state, host=HOST, port=ports[0], blue_port=ports[1],
                    green_port=ports[2], green_weight=GREEN_WEIGHT, bentoml_home=store, ready_timeout=60,
                    source="code")


def wait_ports_free(settings: Settings, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    ports = (settings.port, settings.blue_port, settings.green_port)
    while any(port_in_use(HOST, p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.2)


def stack_memory(stack: Stack) -> dict:
    parts = {c.name: memory_of([c.proc.pid]) for c in stack.children}
    total = {k: round(sum(p[k] for p in parts.values()), 1) for k in ("rss_mib", "pss_mib", "uss_mib", "processes")}
    return {"total": total, **parts}


def version_split(access_log: Path) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    with contextlib.suppress(FileNotFoundError), open(access_log) as f:
        for line in f:
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("uri") == "/predict":
                    status = rec.get("status")
                    label = "499 (cut off when wrk stopped)" if status == 499 else f"status {status}"
                    counts[rec.get("version") or label] += 1
    return dict(counts)


# ---------------------------------------------------------------------------------------------------------------
# profile


PROFILE_KEYS = {
    "predict_proba (sklearn pipeline)": "Pipeline.predict_proba",
    "  ColumnTransformer.transform": "ColumnTransformer.transform",
    "  input validation in sklearn (check_array/validate_data)": "validate_data",
    "  joblib.Parallel (sequential) in ColumnTransformer": "Parallel.__call__",
    "pandas.DataFrame from request rows": "DataFrame.__init__",
    "request parsing + pydantic validation": "from_http_request",
    "response serialisation": "to_http_response",
    "BentoML middleware (otel, metrics, access log, timeout)": "bentoml/_internal/server/http",
    "OpenTelemetry": "opentelemetry",
    "thread hand-off (to_thread / call_soon_threadsafe)": "call_soon_threadsafe",
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
    pct = lambda n: round(100 * n / max(1, total), 1)  # noqa: E731
    generic = ("threading.py", "runpy", "click/core.py", "asyncio/", "uvicorn/server.py", "_compat.py", "<module>")
    frames = [(name, pct(n)) for name, n in inclusive.most_common() if not any(g in name for g in generic)]
    return {"busy_samples": total, "parts_pct": {label: pct(keys[label]) for label in PROFILE_KEYS},
            "top_inclusive_pct": frames[:top]}


def profile_worker(target: Target, body: Path, seconds: int, work: Path) -> dict | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    workers = worker_pids(target.pids[0])
    if not Path(spy).exists() or not workers:
        log("profile skipped: py-spy or the bentoml worker not found")
        return None
    raw = work / f"profile-{target.name}.folded"
    record = subprocess.Popen([spy, "record", "--pid", str(workers[0]), "--duration", str(seconds), "--rate", "200",
                               "--nonblocking", "--function", "--format", "raw", "--output", str(raw)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)
        load = run_wrk(target, body, 32, seconds)
        out, _ = record.communicate(timeout=seconds + 30)
    finally:
        if record.poll() is None:
            record.kill()
            record.wait()
    if not raw.exists():
        log(f"profile failed: {out.strip()[-300:]}")
        return None
    dump = subprocess.run([spy, "dump", "--pid", str(workers[0]), "--nonblocking"], capture_output=True, text=True,
                          timeout=30)
    return {"target": target.name, "worker_pid": workers[0], "load": load, "folded": str(raw), **summarize_profile(raw),
            "dump_idle": dump.stdout.strip().splitlines()[:30]}


# ---------------------------------------------------------------------------------------------------------------
# the run


@dataclass
class Point:
    kind: str  # "single" (one row, connections vary) or "batch" (rows vary, fixed connections)
    connections: int
    rows: int
    targets: list[str]

    @property
    def key(self) -> str:
        return f"c{self.connections}" if self.kind == "single" else f"rows{self.rows}"


@dataclass
class Run:
    args: argparse.Namespace
    work: Path
    store: Path
    children: list[Child] = field(default_factory=list)
    stack: Stack | None = None
    extra_stacks: dict[str, Stack] = field(default_factory=dict)
    results: dict = field(default_factory=dict)

    def stop_all(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop()
        for stack in [*self.extra_stacks.values(), self.stack]:
            if stack is not None:
                with contextlib.suppress(Exception):
                    stack.stop()
        self.stack, self.extra_stacks = None, {}

    # -- start -----------------------------------------------------------------------------------------------
    def cold_starts(self, settings: Settings) -> list[float]:
        times = []
        for i in range(max(1, self.args.cold_starts)):
            wait_ports_free(settings)
            stack = Stack(settings)
            t0 = time.monotonic()
            stack.start()
            self.stack = stack
            times.append(round(time.monotonic() - t0, 2))
            cpu = cpu_seconds([c.proc.pid for c in stack.children])
            self.results.setdefault("cold_start_cpu_s", []).append(round(cpu, 2))
            log(f"canary stack cold start {i + 1}/{self.args.cold_starts}: {times[-1]:.2f} s "
                f"({cpu:.1f} CPU-seconds in its processes)")
            if i + 1 < self.args.cold_starts:
                self.results.setdefault("memory", {})[f"canary_idle_start{i + 1}"] = stack_memory(stack)["total"]
                stack.stop()
                self.stack = None
        return times

    def start_child(self, child: Child, ready_url: str) -> float:
        t0 = time.monotonic()
        child.start()
        self.children.append(child)
        wait_ready([child], {child.name: ready_url}, 60)
        return round(time.monotonic() - t0, 2)

    def memory(self, targets: dict[str, Target]) -> dict:
        stacks = {"canary": self.stack, **self.extra_stacks}
        mem = {name: memory_of(t.pids) for name, t in targets.items() if name not in stacks and name != NGINX_FLOOR}
        return {**mem, **{name: stack_memory(stack) for name, stack in stacks.items()}}

    # -- main ------------------------------------------------------------------------------------------------
    def execute(self) -> None:
        a = self.args
        started = time.monotonic()
        deadline = started + 60 * a.max_minutes
        bodies = write_bodies(self.work / "bodies", a.batches)
        ports = free_ports(5 + 3 * len(a.extras))
        extra_ports = dict(zip(a.extras, (ports[5 + 3 * i: 8 + 3 * i] for i in range(len(a.extras)))))
        settings = canary_settings(self.work / "canary", ROOT, self.store, ports[:3])

        log("timing the canary stack's cold start ...")
        cold = self.cold_starts(settings)
        self.results["cold_start_s"] = {"runs": cold, "median": statistics.median(cold), "goal": GOALS["cold_start_s"]}

        log("starting the baseline and the service ...")
        ready = {"canary_stack": statistics.median(cold)}
        baseline = baseline_child(ports[3], self.work, model_file(self.store, STABLE_VERSION))
        ready["baseline"] = self.start_child(baseline, f"http://{HOST}:{ports[3]}/health")
        ready["service"] = self.start_child(service_child("service", ROOT, ports[4], self.work, self.store),
                                            f"http://{HOST}:{ports[4]}/readyz")
        targets = {
            "baseline": Target("baseline", f"http://{HOST}:{ports[3]}", [self.children[0].proc.pid]),
            "service": Target("service", f"http://{HOST}:{ports[4]}", [self.children[1].proc.pid]),
        }
        for name, folder in a.extras.items():
            kind, _, label = name.partition("@")
            port = extra_ports[name][0]
            if kind == "service":
                child = service_child(f"service-{label}", folder, port, self.work, self.store)
                ready[name] = self.start_child(child, f"http://{HOST}:{port}/readyz")
                targets[name] = Target(name, f"http://{HOST}:{port}", [child.proc.pid])
            else:
                extra = canary_settings(self.work / f"canary-{label}", folder, self.store, extra_ports[name])
                workers = f"services.penguin_classifier.workers={a.extra_canary_workers}"
                t0 = time.monotonic()
                with environment(BENTOML_CONFIG_OPTIONS=workers if label == f"w{a.extra_canary_workers}" else None):
                    self.extra_stacks[name] = Stack(extra).start()
                ready[name] = round(time.monotonic() - t0, 2)
                targets[name] = Target(name, extra.url, [c.proc.pid for c in self.extra_stacks[name].children])
        self.results["ready_s"] = ready
        targets["canary"] = Target("canary", settings.url, [c.proc.pid for c in self.stack.children],
                                   parts={c.name: [c.proc.pid] for c in self.stack.children})
        targets[NGINX_FLOOR] = Target(NGINX_FLOOR, settings.url, [self.stack.children[-1].proc.pid], method="GET")
        self.results["check"] = check_targets(targets, bodies)
        if a.targets:
            wanted = set(a.targets.split(","))
            targets = {name: t for name, t in targets.items() if name in wanted}
        http = [t for t in targets if t != NGINX_FLOOR]

        self.results.setdefault("memory", {})["idle"] = self.memory(targets)

        log("warming up every target ...")
        for name in http:
            run_wrk(targets[name], bodies[1], 8, a.warmup)
            run_wrk(targets[name], bodies[max(a.batches)], 2, 1)

        pipelines = load_pipelines(self.store)
        points = [Point("single", c, 1, [*http, *([NGINX_FLOOR] if NGINX_FLOOR in targets else [])])
                  for c in a.concurrency]
        points += [Point("batch", a.batch_concurrency, n, list(http)) for n in a.batches
                   if not (n == 1 and a.batch_concurrency in a.concurrency)]
        per_round = sum(len(p.targets) for p in points) * (a.duration + 0.5)
        log(f"{a.repeats} rounds x {sum(len(p.targets) for p in points)} runs x {a.duration} s "
            f"(~{per_round * a.repeats / 60:.1f} min)")

        raw: dict = {}
        floors: list[dict] = []
        for rnd in range(a.repeats):
            if time.monotonic() > deadline:
                log(f"--max-minutes reached: stopping after {rnd} rounds")
                break
            floors.append(predict_floor(pipelines, a.batches))
            for point in points:
                shift = rnd % len(point.targets)
                order = point.targets[shift:] + point.targets[:shift]
                for name in order:
                    res = run_wrk(targets[name], bodies[point.rows], point.connections, a.duration)
                    raw.setdefault(point.key, {}).setdefault(name, []).append(res)
                    flag = f"  ERRORS {res['errors']}" if res["errors"] else ""
                    log(f"round {rnd + 1}/{a.repeats} {point.key:>8} {name:<16} {res['rps']:>9.1f} req/s  "
                        f"p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:7.2f} ms  "
                        f"cpu {res['cpu_ms_per_req']:6.2f} ms/req  others {res['other_cpu_pct']:5.1f}%{flag}")
        self.results["raw"] = raw
        self.results["floor_rounds"] = floors
        self.results["points"] = {p.key: {"kind": p.kind, "connections": p.connections, "rows": p.rows} for p in points}

        self.results["memory"]["after_load"] = self.memory(targets)
        self.results["canary_versions"] = version_split(settings.state_dir / "logs" / "access.log")

        if a.profile:
            log("profiling the service worker with py-spy under 32 connections ...")
            self.results["profile"] = profile_worker(targets["service"], bodies[1], a.profile_seconds, self.work)
        self.results["elapsed_s"] = round(time.monotonic() - started, 1)


# ---------------------------------------------------------------------------------------------------------------
# reporting


def med(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def summarize(results: dict, args: argparse.Namespace) -> dict:
    table: dict = {}
    for key, by_target in results["raw"].items():
        for name, runs in by_target.items():
            table.setdefault(key, {})[name] = {
                "rps": med([r["rps"] for r in runs]),
                "rps_min": min(r["rps"] for r in runs),
                "rps_max": max(r["rps"] for r in runs),
                "p50_ms": med([r["p50_ms"] for r in runs]),
                "p99_ms": med([r["p99_ms"] for r in runs]),
                "cpu_ms_per_req": med([r["cpu_ms_per_req"] for r in runs]),
                "other_cpu_pct": med([r["other_cpu_pct"] for r in runs]),
                "errors": sum(r["errors"] for r in runs),
                **({"cpu_ms_per_req_by_part": {k: med([r["cpu_ms_per_req_by_part"][k] for r in runs])
                                               for k in runs[0]["cpu_ms_per_req_by_part"]}}
                   if "cpu_ms_per_req_by_part" in runs[0] else {}),
                "rounds": len(runs),
            }
    rows_s: dict = {}
    points = results["points"]
    for n in args.batches:
        key = next((k for k, p in points.items() if p["rows"] == n and p["connections"] == args.batch_concurrency),
                   None)
        if key is None:
            continue
        for name, cell in table[key].items():
            if name != NGINX_FLOOR:
                rows_s.setdefault(name, {})[str(n)] = round(cell["rps"] * n, 1)
    floors = results["floor_rounds"]
    floor = {v: {n: med([f[v][n] for f in floors]) for n in floors[0][v]} for v in floors[0]} if floors else {}
    if floor:
        share = GREEN_WEIGHT / 100
        floor["mix_90_10"] = {
            n: round(1 / ((1 - share) / floor[STABLE_VERSION][n] + share / floor[CANDIDATE_VERSION][n]), 1)
            for n in floor[STABLE_VERSION]
        }
    ratios = {}
    top = f"c{max(args.concurrency)}"
    if top in table and {"canary", "baseline", "service"} <= table[top].keys():
        c, b, s = (table[top][n] for n in ("canary", "baseline", "service"))
        ratios["canary_vs_baseline_rps_c32"] = round(c["rps"] / b["rps"], 2)
        ratios["canary_vs_baseline_p99_c32"] = round(c["p99_ms"] / b["p99_ms"], 2)
        ratios["canary_vs_service_rps_c32"] = round(c["rps"] / s["rps"], 2)
        ratios["service_vs_baseline_rps_c32"] = round(s["rps"] / b["rps"], 2)
        for name in [n for n in table[top] if n.startswith("canary@")]:
            ratios[f"{name}_vs_baseline_rps_c32"] = round(table[top][name]["rps"] / b["rps"], 2)
            ratios[f"{name}_vs_baseline_p99_c32"] = round(table[top][name]["p99_ms"] / b["p99_ms"], 2)
    big = str(max(args.batches))
    if floor and "canary" in rows_s and big in rows_s["canary"]:
        ratios["canary_batch1000_vs_floor"] = round(rows_s["canary"][big] / floor[STABLE_VERSION][big], 2)
        ratios["canary_batch1000_vs_floor_mix"] = round(rows_s["canary"][big] / floor["mix_90_10"][big], 2)
    return {"table": table, "rows_per_s": rows_s, "floor_rows_per_s": floor, "ratios": ratios}


def verdicts(summary: dict, results: dict) -> list[tuple[str, str, str, bool | None]]:
    r = summary["ratios"]
    out = []
    if "canary_vs_baseline_rps_c32" in r:
        out.append(("canary / FastAPI baseline, req/s at 32 conns", f"{r['canary_vs_baseline_rps_c32']:.2f}x",
                    ">= 1.0x", r["canary_vs_baseline_rps_c32"] >= 1.0))
        out.append(("canary / FastAPI baseline, p99 at 32 conns", f"{r['canary_vs_baseline_p99_c32']:.2f}x",
                    "<= 1.0x", r["canary_vs_baseline_p99_c32"] <= 1.0))
        out.append(("canary / service direct, req/s at 32 conns", f"{r['canary_vs_service_rps_c32']:.2f}x",
                    ">= 0.95x", r["canary_vs_service_rps_c32"] >= 0.95))
    for key in [k for k in r if k.startswith("canary@") and k.endswith("_rps_c32")]:
        name = key.removesuffix("_vs_baseline_rps_c32")
        p99 = r[f"{name}_vs_baseline_p99_c32"]
        out.append((f"  {name} / FastAPI baseline, req/s (p99) at 32 conns", f"{r[key]:.2f}x ({p99:.2f}x)",
                    ">= 1.0x", r[key] >= 1.0 and p99 <= 1.0))
    if "canary_batch1000_vs_floor" in r:
        out.append(("canary 1,000-row batches / in-process floor v1.0.0", f"{r['canary_batch1000_vs_floor']:.2f}x",
                    ">= 0.5x", r["canary_batch1000_vs_floor"] >= 0.5))
        out.append(("  same, floor = 90/10 mix of v1.0.0/v1.1.0", f"{r['canary_batch1000_vs_floor_mix']:.2f}x",
                    ">= 0.5x", r["canary_batch1000_vs_floor_mix"] >= 0.5))
    cold = results["cold_start_s"]["median"]
    out.append(("canary stack cold start (median)", f"{cold:.1f} s", "< 10 s", cold < 10))
    return out


def ordered(args: argparse.Namespace) -> list[str]:
    """Targets in reading order: baseline, our service (and variants), the canary (and variants), the nginx floor."""
    extras = list(args.extras)
    return ["baseline", "service", *[e for e in extras if e.startswith("service@")], "canary",
            *[e for e in extras if e.startswith("canary@")], NGINX_FLOOR]


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def markdown(summary: dict, results: dict, meta: dict, args: argparse.Namespace) -> str:
    t = summary["table"]
    names = ordered(args)
    lines = [
        "# Benchmark results",
        "",
        f"{meta['date']} · {meta['cpus']} CPUs (shared) · commit {meta['commit']} · wrk · "
        f"{args.duration} s per point · "
        f"{args.repeats} interleaved rounds, medians (req/s range min–max over rounds) · `{meta['command']}`",
        "",
        "## Single-row POST /predict",
        "",
        "| target | conns | req/s | range | p50 ms | p99 ms | CPU ms/req | others' CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in args.concurrency:
        for name in names:
            cell = t.get(f"c{c}", {}).get(name)
            if cell:
                label = "nginx /_nginx/ping (floor)" if name == NGINX_FLOOR else name
                spread = f"{fmt_rate(cell['rps_min'])}–{fmt_rate(cell['rps_max'])}"
                lines.append(f"| {label} | {c} | {fmt_rate(cell['rps'])} | {spread} | {cell['p50_ms']:.2f} | "
                             f"{cell['p99_ms']:.2f} | {cell['cpu_ms_per_req']:.2f} | {cell['other_cpu_pct']:.0f} |")
    for c in args.concurrency:
        parts = t.get(f"c{c}", {}).get("canary", {}).get("cpu_ms_per_req_by_part")
        if parts:
            lines.append(f"\nCanary CPU ms per request at {c} conns, by process: "
                         + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()) + ".")
    lines += ["", "CPU ms/req: CPU time of all the target's processes divided by requests served (less sensitive to "
              "other load than req/s). Others' CPU %: the rest of the machine's busy time during the run (other "
              "people's jobs, our idle servers), in % of one core.",
              "", f"## Rows/s by batch size ({args.batch_concurrency} connections)", ""]
    sizes = [str(n) for n in args.batches]
    lines += ["| target | " + " | ".join(f"{n} rows" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for name in [n for n in names if n in summary["rows_per_s"]]:
        lines.append(f"| {name} | " + " | ".join(fmt_rate(summary["rows_per_s"][name].get(n, 0)) for n in sizes) + " |")
    for v, label in ((STABLE_VERSION, "in-process predict_proba v1.0.0 (floor)"),
                     (CANDIDATE_VERSION, "in-process predict_proba v1.1.0"), ("mix_90_10", "in-process 90/10 mix")):
        if v in summary["floor_rows_per_s"]:
            floor = summary["floor_rows_per_s"][v]
            lines.append(f"| {label} | " + " | ".join(fmt_rate(floor[n]) for n in sizes) + " |")
    lines += ["", "## Goals (reported, not asserted)", "", "| measure | result | goal | met |", "|---|---:|---:|:---:|"]
    for label, value, goal, ok in verdicts(summary, results):
        lines.append(f"| {label} | {value} | {goal} | {'yes' if ok else 'no'} |")
    cold = results["cold_start_s"]
    mem = results["memory"]
    lines += ["", "## Cold start and memory", "",
              f"- Canary stack cold start (`Stack.start()` until blue, green and nginx answer): "
              f"{', '.join(f'{x:.1f}' for x in cold['runs'])} s (median {cold['median']:.1f} s), using "
              f"{', '.join(f'{x:.1f}' for x in results.get('cold_start_cpu_s', []))} CPU-seconds in its processes. "
              f"Alone, one `bentoml serve` was ready in {results['ready_s']['service']:.1f} s, the baseline in "
              f"{results['ready_s']['baseline']:.1f} s.",
              "", "| processes | state | RSS MiB | PSS MiB | processes |", "|---|---|---:|---:|---:|"]
    for state in ("idle", "after_load"):
        for name, m in mem[state].items():
            if "total" in m:
                rows = [(f"{name} stack (total)", m["total"])]
                rows += [(f"&nbsp;&nbsp;{part}", m[part]) for part in ("blue", "green", "nginx")]
            else:
                rows = [(name, m)]
            for label, x in rows:
                lines.append(f"| {label} | {state} | {x['rss_mib']:.0f} | {x['pss_mib']:.0f} | {x['processes']} |")
    split = results.get("canary_versions") or {}
    total = sum(split.values())
    if total:
        lines += ["", "Canary split over all benchmark requests (nginx access log): "
                  + ", ".join(f"{v} {n:,} ({100 * n / total:.1f}%)" for v, n in sorted(split.items()))]
    prof = results.get("profile")
    if prof:
        lines += ["", f"## Profile: service worker at 32 connections (py-spy, {prof['busy_samples']} busy samples)", "",
                  "| part | share of busy worker time |", "|---|---:|"]
        lines += [f"| {label.replace(' ', '&nbsp;', 2) if label.startswith(' ') else label} | {pct:.0f}% |"
                  for label, pct in prof["parts_pct"].items()]
    lines += ["", "Reproduce: `BENTOML_HOME=/tmp/bench-home make bench` (or `python bench/run.py --quick`). "
              "Raw per-round numbers are in results.json.", ""]
    return "\n".join(lines)


def chart(summary: dict, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = summary["table"]
    names = [n for n in ordered(args) if n != NGINX_FLOOR and any(n in t.get(f"c{c}", {}) for c in args.concurrency)]
    colors = {"baseline": "#999999", "service": "#4c72b0", "canary": "#dd8452", "canary@w2": "#c44e52"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(args.concurrency))]
        cells = [t[f"c{c}"][name] for c in args.concurrency]
        ys = [cell["rps"] for cell in cells]
        err = [[y - cell["rps_min"] for y, cell in zip(ys, cells)], [cell["rps_max"] - y for y, cell in zip(ys, cells)]]
        left.bar(xs, ys, width, yerr=err, capsize=2, label=name, color=colors.get(name))
        for x, cell in zip(xs, cells):
            left.text(x, 0, f"{cell['p99_ms']:.0f}", ha="center", va="bottom", fontsize=6, color="white")
    left.set_xticks(range(len(args.concurrency)), [f"{c} conns" for c in args.concurrency])
    left.set_ylabel("requests/s (median, min–max)")
    left.set_title("Single-row POST /predict (bar labels: p99 ms)", fontsize=9)
    left.legend(fontsize=7)
    sizes = [str(n) for n in args.batches]
    for name in names:
        if name in summary["rows_per_s"]:
            right.plot([int(n) for n in sizes], [summary["rows_per_s"][name].get(n) for n in sizes], marker="o",
                       label=name, color=colors.get(name))
    floor = summary["floor_rows_per_s"]
    if floor:
        right.plot([int(n) for n in sizes], [floor[STABLE_VERSION][n] for n in sizes], "k--", marker=".",
                   label="in-process v1.0.0 (floor)")
        right.plot([int(n) for n in sizes], [floor["mix_90_10"][n] for n in sizes], "k:", marker=".",
                   label="in-process 90/10 mix")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("rows per request")
    right.set_ylabel("rows/s")
    right.set_title(f"Batches at {args.batch_concurrency} connections", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def print_table(summary: dict, results: dict, args: argparse.Namespace) -> None:
    t = summary["table"]
    names = ordered(args)
    print("\nsingle-row POST /predict: req/s (p50 / p99 ms), median of rounds")
    print(f"{'target':<18}" + "".join(f"{'c=' + str(c):>26}" for c in args.concurrency))
    for name in names:
        cells = [t.get(f"c{c}", {}).get(name) for c in args.concurrency]
        print(f"{name:<18}" + "".join(f"{fmt_rate(x['rps']):>9} ({x['p50_ms']:6.1f} /{x['p99_ms']:6.1f})"
                                      if x else f"{'-':>26}" for x in cells))
    print(f"\nrows/s at {args.batch_concurrency} connections")
    print(f"{'target':<18}" + "".join(f"{str(n) + ' rows':>14}" for n in args.batches))
    for name, row in summary["rows_per_s"].items():
        print(f"{name:<18}" + "".join(f"{fmt_rate(row.get(str(n), 0)):>14}" for n in args.batches))
    for v in summary["floor_rows_per_s"]:
        floor = summary["floor_rows_per_s"][v]
        print(f"{'floor ' + v:<18}" + "".join(f"{fmt_rate(floor[str(n)]):>14}" for n in args.batches))
    print("\ngoals")
    for label, value, goal, ok in verdicts(summary, results):
        print(f"  {label:<52} {value:>8}  goal {goal:<8} {'met' if ok else 'NOT met'}")
    m = results["memory"]["after_load"]["canary"]["total"]
    print(f"  canary stack memory after load: RSS {m['rss_mib']:.0f} MiB, PSS {m['pss_mib']:.0f} MiB, "
          f"{m['processes']} processes")


def git_commit() -> str:
    with contextlib.suppress(Exception):
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()
    return "unknown"


def preflight(store: Path) -> None:
    missing = [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} not installed: sudo apt-get install -y {' '.join(missing)}")
    for module in ("fastapi", "uvicorn", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            raise SystemExit(f"error: {module} is missing: pip install -e '.[bench]'") from None
    for v in (STABLE_VERSION, CANDIDATE_VERSION):
        if not (store / "models" / MODEL_NAME / v / "model.joblib").is_file():
            raise SystemExit(f"error: {MODEL_NAME}:{v} is not in {store} (run `python train_model.py` or `make train`)")


def interrupt(*_) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the run like Ctrl-C: the finally block stops every process


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    store = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser().absolute()
    preflight(store)
    work = Path(tempfile.mkdtemp(prefix="canary-bench-"))
    work.chmod(0o755)  # nginx workers (user nobody when started as root) buffer large bodies under the state dir
    signal.signal(signal.SIGTERM, interrupt)
    run = Run(args, work, store)
    meta = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": git_commit(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0][:60],
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
        "load_average_before": os.getloadavg(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "extras"},
        "extra_services": {k: str(v) for k, v in args.extras.items()},
        "work_dir": str(work),
    }
    log(f"work folder (configs, logs): {work}")
    try:
        run.execute()
    except (CanaryError, RuntimeError, subprocess.TimeoutExpired) as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        log("stopping everything this run started ...")
        run.stop_all()
    meta["load_average_after"] = os.getloadavg()
    results = run.results
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, **results}, indent=1, default=str) + "\n")
    summary = summarize(results, args)
    if results.get("profile"):  # keep py-spy's folded stacks, gzipped, for a flame graph (zcat, then speedscope.app)
        import gzip

        folded = Path(results["profile"]["folded"])
        (args.out / f"{folded.name}.gz").write_bytes(gzip.compress(folded.read_bytes(), mtime=0))
        results["profile"]["folded"] = f"{folded.name}.gz"
    report = {"meta": meta, "goals": GOALS, **summary, **{k: v for k, v in results.items()}}
    (args.out / "results.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (args.out / "results.md").write_text(markdown(summary, results, meta, args))
    chart(summary, args, args.out / "results.png")
    print_table(summary, results, args)
    log(f"wrote {args.out / 'results.json'}, results.md, results.png in {results['elapsed_s'] / 60:.1f} min")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
