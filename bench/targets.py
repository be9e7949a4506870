"""What bench/run.py measures and how: the processes (baseline, services, canary stack), wrk load, CPU and memory,
the in-process floors, the parity of served answers and the py-spy profile. All on 127.0.0.1.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import timeit
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from canary_kit.config import Settings  # noqa: E402
from canary_kit.stack import Child, Stack, port_in_use  # noqa: E402
from penguin.features import CANDIDATE_VERSION, EXAMPLE, FEATURES, MODEL_NAME, STABLE_VERSION  # noqa: E402

LUA = BENCH / "wrk_post.lua"
HOST = "127.0.0.1"
NGINX_FLOOR = "nginx"
FRAMEWORK_FLOOR = "floor"  # service.py with --arg runtime=constant: BentoML and our middleware, no model
GREEN_WEIGHT = 10
COLUMNS = "canary@columns"  # the canary stack asked in columns: POST /predict_columns (batch points only)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


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


def service_child(name: str, project: Path, port: int, work: Path, store: Path, runtime: str | None = "onnx") -> Child:
    """service.py under `bentoml serve` with v1.0.0 (runtime None: leave the choice to that service.py)."""
    argv = [bentoml_bin(), "serve", "service:PenguinClassifier", "--arg", f"model_version={STABLE_VERSION}",
            *(["--arg", f"runtime={runtime}"] if runtime else []), "--host", HOST, "--port", str(port)]
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
    columnar: bool = False  # POST /predict_columns with {"columns": ...} bodies instead of /predict with rows

    def path(self) -> str:
        return "/_nginx/ping" if self.method == "GET" else "/predict_columns" if self.columnar else "/predict"

    def body(self, bodies: dict[int, Path], rows: int) -> Path:
        """The request body of `rows` rows in this target's form (write_bodies wrote both)."""
        return bodies[rows].with_name(f"body-columns-{rows}.json") if self.columnar else bodies[rows]


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
    """Rows -> the row-object body of that many rows; beside it, body-columns-N.json, the same rows as columns."""
    folder.mkdir(parents=True, exist_ok=True)
    bodies = {}
    for n in sorted(set(sizes) | {1}):
        path = folder / f"body-{n}.json"
        path.write_text(json.dumps({"instances": [EXAMPLE] * n}))
        (folder / f"body-columns-{n}.json").write_text(json.dumps({"columns": {f: [EXAMPLE[f]] * n for f in FEATURES}}))
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
                r = client.post(t.url + t.path(), content=t.body(bodies, n).read_bytes(),
                                headers={"content-type": "application/json"})
                if r.status_code != 200:
                    raise RuntimeError(f"{name}: POST {t.path()} ({n} rows) -> {r.status_code}: {r.text[:300]}")
                data = r.json()
                if len(data["predictions"]) != n or "x-model-version" not in r.headers:
                    raise RuntimeError(f"{name}: unexpected answer {r.text[:300]}")
                if t.columnar:  # the same answer as row objects: {"probabilities": [{class: p}, ...]}
                    data["probabilities"] = [dict(zip(data["probabilities"], p))
                                             for p in zip(*data["probabilities"].values())]
            if r.headers["x-model-version"] == STABLE_VERSION and name != FRAMEWORK_FLOOR:  # the floor has no model
                seen[name] = (data["predictions"][0], data["probabilities"][0])
    first = next(iter(seen.values()))
    differ = [name for name, (label, proba) in seen.items()
              if label != first[0] or max(abs(proba[c] - first[1][c]) for c in proba) > 1e-6]
    if differ:
        raise RuntimeError(f"targets disagree on the example: {differ} vs {first}")
    return {"example_prediction": first[0], "example_probabilities": first[1]}


# ---------------------------------------------------------------------------------------------------------------
# in-process floor


def model_file(store: Path, version: str, name: str = "model.joblib") -> Path:
    return store / "models" / MODEL_NAME / version / name


def load_predictors(store: Path) -> dict[str, object]:
    """What the services predict with, in this process: the ONNX graphs of both versions, and v1.0.0's pipeline."""
    from penguin.predictor import ONNX_FILE, OnnxPredictor, SklearnPredictor

    classes = SklearnPredictor(model_file(store, STABLE_VERSION)).classes
    predictors = {v: OnnxPredictor(str(model_file(store, v, ONNX_FILE)), classes) for v in (STABLE_VERSION, CANDIDATE_VERSION)}
    predictors[f"sklearn {STABLE_VERSION}"] = SklearnPredictor(model_file(store, STABLE_VERSION))
    return predictors


def predict_floor(predictors: dict[str, object], sizes: list[int]) -> dict[str, dict[str, float]]:
    """Rows/s of predict_proba on ready request columns, one thread (OpenMP limited to 1), best of 5 timings.

    This times a function call in-process, not HTTP: it is the floor the served numbers are compared with.
    """
    from threadpoolctl import threadpool_limits

    out: dict[str, dict[str, float]] = {}
    with threadpool_limits(limits=1):
        for name, predictor in predictors.items():
            for n in sizes:
                columns = {f: [EXAMPLE[f]] * n for f in FEATURES}
                timer = timeit.Timer(lambda: predictor.predict_proba(columns))
                once = min(timer.repeat(repeat=2, number=1))
                number = max(1, min(200, int(0.1 / max(once, 1e-6))))
                best = min(timer.repeat(repeat=5, number=number)) / number
                out.setdefault(name, {})[str(n)] = round(n / best, 1)
    return out


def served_parity(urls: dict[str, str], store: Path) -> dict[str, dict]:
    """Per version: the largest probability difference between the served answers and scikit-learn's, and the
    class mismatches, over every data row and the generated rows (penguin/parity.py)."""
    import joblib

    from penguin import parity

    data = parity.data_rows(ROOT / "data" / "data.csv")
    out = {}
    for version, url in urls.items():
        result = parity.served_parity(url, joblib.load(model_file(store, version)), data)
        out[version] = {k: result[k] for k in ("rows", "data_rows", "generated_rows", "max_abs_prob_diff",
                                               "class_mismatches", "predictions_disagree_with_probabilities",
                                               "versions", "ok")}
        log(f"parity {version} at {url}: {parity.summary(result)}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# canary stack


def canary_settings(state: Path, project: Path, store: Path, ports: list[int]) -> Settings:
    """The stack on four free ports (nginx, blue, green's two slots); what it ships from [tool.canary]."""
    return Settings(project_dir=project, state_dir=state, host=HOST, port=ports[0], blue_port=ports[1],
                    green_port=ports[2], green_port_b=ports[3], green_weight=GREEN_WEIGHT, bentoml_home=store,
                    ready_timeout=60, source="code")


def wait_ports_free(settings: Settings, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    ports = (settings.port, settings.blue_port, settings.green_port, settings.green_port_b)
    while any(port_in_use(HOST, p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.2)


def part(child_name: str) -> str:
    """blue, green or nginx: green runs in slot green_a or green_b."""
    return "green" if child_name.startswith("green") else child_name


def backends(stack: Stack) -> dict[str, tuple[str, str]]:
    """version -> (blue or green, loopback URL) of the stack's two backends."""
    state, s = stack.state, stack.settings
    return {state.blue_version: ("blue", s.slot_url("blue")),
            state.green_version: ("green", s.slot_url(state.green_slot))}


def stack_memory(stack: Stack) -> dict:
    parts = {part(c.name): memory_of([c.proc.pid]) for c in stack.children}
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


