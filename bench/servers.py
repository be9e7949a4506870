"""The servers bench.run measures and the subjects it loads: the baseline, the services and the canary stack, started
on 127.0.0.1; their processes' CPU and memory; what the canary stack served.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from canary_kit.core.config import Settings
from canary_kit.core.processes import Child, port_in_use
from canary_kit.stacks.backends import bentoml_bin, private_home
from canary_kit.stacks.local import Stack
from penguin.features import STABLE_VERSION

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "127.0.0.1"
NGINX_FLOOR = "nginx"
FRAMEWORK_FLOOR = "floor"  # service.py with --arg runtime=constant: BentoML and our middleware, no model
GREEN_WEIGHT = 10
COLUMNS = "canary@columns"  # the canary stack asked in columns: POST /predict_columns (batch points only)
NO_METRICS = "canary@nometrics"  # the extra canary stack whose backends export no prediction metrics (ALIKE, below)
# What a feature costs: extra canary stacks started alike, one as shipped (shipped) and one without the feature
# (nometrics: its backends export no prediction metrics; noobserve: its nginx reads no predictions in the answers),
# each also asked in columns (batch points only). None is the main stack, which serves the cold starts, the parity
# check and every other subject: each pair differs in the feature alone.
SHIPPED = "canary@shipped"
NO_OBSERVE = "canary@noobserve"
# twin: a second stack exactly as shipped, the A/A control. Two processes of the same code differ by several percent
# in speed for as long as they run (memory layout, hash seeds), so shipped / twin says how far apart two stacks that
# differ in nothing measure: the resolution of the on / off ratios.
TWIN = "canary@twin"
ALIKE = (SHIPPED, "canary@nometrics", NO_OBSERVE, TWIN)  # the stacks compared with one another


def columns(name: str) -> str:
    """The subject asking stack `name` in columns."""
    return f"{name}-columns"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Subject:
    """What one series of wrk runs loads: a URL, and the processes whose CPU and memory are its cost."""

    name: str
    url: str
    children: list[Child]
    method: str = "POST"
    parts: dict[str, list[Child]] = field(default_factory=dict)  # CPU per part too (canary: blue, green, nginx)
    columnar: bool = False  # POST /predict_columns with {"columns": ...} bodies instead of /predict with rows

    def path(self) -> str:
        return "/_nginx/ping" if self.method == "GET" else "/predict_columns" if self.columnar else "/predict"

    def body(self, bodies: dict[int, Path], rows: int) -> Path:
        """The request body of `rows` rows in this subject's form (load.write_bodies wrote both)."""
        return bodies[rows].with_name(f"body-columns-{rows}.json") if self.columnar else bodies[rows]


# ---------------------------------------------------------------------------------------------------------------
# servers


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


def service_child(name: str, project: Path, port: int, work: Path, store: Path, runtime: str | None = "onnx") -> Child:
    """service.py under `bentoml serve` with v1.0.0 (runtime None: leave the choice to that service.py)."""
    argv = [
        bentoml_bin(),
        "serve",
        "service:PenguinClassifier",
        "--arg",
        f"model_version={STABLE_VERSION}",
        *(["--arg", f"runtime={runtime}"] if runtime else []),
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    env = {
        "BENTOML_HOME": str(private_home(work / name / "bentoml", store)),
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONUNBUFFERED": "1",
    }
    return Child(name, argv, work / "logs" / f"{name}.log", env, project)


def baseline_child(port: int, work: Path, model_path: Path) -> Child:
    """bench/baseline_app.py under uvicorn, run from the project folder (where the package `bench` is)."""
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.baseline_app:app",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
    ]
    env = {"BASELINE_MODEL_PATH": str(model_path), "BASELINE_MODEL_VERSION": STABLE_VERSION, "PYTHONUNBUFFERED": "1"}
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


# ---------------------------------------------------------------------------------------------------------------
# CPU and memory


def processes(children: list[Child]) -> list[psutil.Process]:
    return [proc for child in children for proc in child.tree()]


def memory_of(children: list[Child]) -> dict:
    """RSS (what `ps` shows; shared pages counted in every process) and PSS (shared pages split) in MiB."""
    rss = pss = uss = 0
    count = 0
    for proc in processes(children):
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            rss, pss, uss, count = rss + info.rss, pss + getattr(info, "pss", 0), uss + info.uss, count + 1
    mib = 1024 * 1024
    return {
        "rss_mib": round(rss / mib, 1),
        "pss_mib": round(pss / mib, 1),
        "uss_mib": round(uss / mib, 1),
        "processes": count,
    }


def cpu_seconds(children: list[Child]) -> float:
    total = 0.0
    for proc in processes(children):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all processes, ours and other people's), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def worker_pids(child: Child) -> list[int]:
    """The BentoML worker processes of one `bentoml serve`."""
    return [
        p.pid
        for p in child.tree()
        if any("_bentoml_impl.worker.service" in part for part in (p.cmdline() if p.is_running() else []))
    ]


# ---------------------------------------------------------------------------------------------------------------
# canary stack


def canary_settings(state: Path, project: Path, store: Path, ports: list[int], **more) -> Settings:
    """The stack on four free ports (nginx, blue, green's two slots); what it ships from [tool.canary]."""
    return Settings(
        **more,
        project_dir=project,
        state_dir=state,
        host=HOST,
        port=ports[0],
        blue_port=ports[1],
        green_port=ports[2],
        green_port_b=ports[3],
        green_weight=GREEN_WEIGHT,
        bentoml_home=store,
        ready_timeout=60,
        source="code",
    )


def wait_ports_free(settings: Settings, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    ports = (settings.port, settings.blue_port, settings.green_port, settings.green_port_b)
    while any(port_in_use(HOST, p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.2)


def part(child_name: str) -> str:
    """blue, green or nginx: green runs in slot green_a or green_b."""
    return "green" if child_name.startswith("green") else child_name


def stack_subject(name: str, stack: Stack, by_part: bool = True, columnar: bool = False) -> Subject:
    """A canary stack as a subject: all its processes, and (by_part) each part's (blue, green, nginx) apart."""
    parts = {part(c.name): [c] for c in stack.children} if by_part else {}
    return Subject(name, stack.settings.url, list(stack.children), parts=parts, columnar=columnar)


def backends(stack: Stack) -> dict[str, tuple[str, str]]:
    """version -> (blue or green, loopback URL) of the stack's two backends."""
    state, s = stack.state, stack.settings
    return {
        state.blue_version: ("blue", s.slot_url("blue")),
        state.green_version: ("green", s.slot_url(state.green_slot)),
    }


def stack_memory(stack: Stack) -> dict:
    parts = {part(c.name): memory_of([c]) for c in stack.children}
    total = {k: round(sum(p[k] for p in parts.values()), 1) for k in ("rss_mib", "pss_mib", "uss_mib", "processes")}
    return {"total": total, **parts}


def version_split(access_log: Path) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    with contextlib.suppress(FileNotFoundError), open(access_log) as f:
        for line in f:
            with contextlib.suppress(ValueError):
                rec = json.loads(line) if line.startswith("{") else {}
                if rec.get("uri") == "/predict":
                    status = rec.get("status")
                    label = "499 (cut off when wrk stopped)" if status == 499 else f"status {status}"
                    counts[rec.get("version") or label] += 1
    return dict(counts)
