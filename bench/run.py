"""Benchmark the canary kit side by side with a FastAPI baseline; results in bench/results/.

    make bench                                       # the full run (~17 min on 2 cores), = python -m bench.run
    python -m bench.run --quick                      # smoke run (~3 min), results in bench/results/quick/
    python -m bench.run --duration 5 --repeats 3     # choose the time per point and the rounds
    python -m bench.run --extra-service before=/tmp/old-checkout   # A/B another service.py (a project folder)

Run from the project folder (the package `bench` is there). What runs, all on 127.0.0.1 and all started (and always
stopped) by this script:
  baseline        bench/baseline_app.py: FastAPI + uvicorn + the joblib pickle, one worker, v1.0.0 (benchmark only)
  service         our service.py under `bentoml serve`, v1.0.0 through onnxruntime, hit directly on its port
  service@sklearn the same with --arg runtime=sklearn (the scikit-learn pipeline)
  floor           framework floor: the same service with --arg runtime=constant, answering without a model
  canary          the whole canary path from canary_kit.stacks.local.Stack: nginx 90/10 -> blue v1.0.0 / green v1.1.0
  nginx           floor: the same nginx answering GET /_nginx/ping without an upstream
  in-process floor: the ONNX graphs' (and v1.0.0's pipeline's) predict_proba on ready columns, one thread

Each of these is a subject (bench/servers.py): what wrk loads and whose processes' CPU and memory are measured.
Load comes from wrk (Debian) with bench/wrk_post.lua. Every point is measured `--repeats` times, interleaved:
round 1 runs every subject once at every point, round 2 again with the subjects' order rotated, and so on, so drift
on a shared machine shows up as spread, not as a bias against whoever ran last. Tables show medians over rounds.
Also measured: the canary stack's cold start (Stack.start until blue, green and nginx answer), the memory of every
process each subject runs, the parity of the canary's served answers with scikit-learn's (every data row and the
generated rows, per version) and (unless --no-profile) a py-spy profile of the service's worker under load.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import report, writeup
from bench.load import check_subjects, run_wrk, write_bodies
from bench.model import load_predictors, model_file, predict_floor, served_parity
from bench.options import parse_args
from bench.pyspy import profile_worker
from bench.servers import (
    ALIKE,
    COLUMNS,
    FRAMEWORK_FLOOR,
    HOST,
    NGINX_FLOOR,
    NO_METRICS,
    NO_OBSERVE,
    ROOT,
    Subject,
    backends,
    baseline_child,
    canary_settings,
    columns,
    cpu_seconds,
    environment,
    free_ports,
    log,
    memory_of,
    service_child,
    stack_memory,
    stack_subject,
    version_split,
    wait_ports_free,
)
from canary_kit.core.config import Settings
from canary_kit.core.errors import CanaryError
from canary_kit.stacks.backends import wait_ready
from canary_kit.stacks.local import Child, Stack
from penguin.features import CANDIDATE_VERSION, MODEL_NAME, STABLE_VERSION

# A run during which other processes took more than this share of the CPU measured them, not the subject: it is
# measured again (at most twice; the last try is kept whatever it shows, and each run records how often it was).
DISTURBED_PCT = 15.0
DISTURBED_RETRIES = 2

# ---------------------------------------------------------------------------------------------------------------
# the run


@dataclass
class Point:
    kind: str  # "single" (one row, connections vary) or "batch" (rows vary, fixed connections)
    connections: int
    rows: int
    subjects: list[str]

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
            cpu = cpu_seconds(stack.children)
            self.results.setdefault("cold_start_cpu_s", []).append(round(cpu, 2))
            log(
                f"canary stack cold start {i + 1}/{self.args.cold_starts}: {times[-1]:.2f} s "
                f"({cpu:.1f} CPU-seconds in its processes)"
            )
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

    def memory(self, subjects: dict[str, Subject]) -> dict:
        stacks = {"canary": self.stack, **self.extra_stacks}
        alone = {name: t for name, t in subjects.items() if name not in stacks and name != NGINX_FLOOR}
        mem = {name: memory_of(t.children) for name, t in alone.items()}
        return {**mem, **{name: stack_memory(stack) for name, stack in stacks.items()}}

    def start_extra_canary(self, name: str, folder: Path, ports: list[int]) -> tuple[float, dict[str, Subject]]:
        """Start extra canary stack `name` (again, if it runs: new processes): seconds to ready, its subjects."""
        a = self.args
        label = name.partition("@")[2]
        if name in self.extra_stacks:
            self.extra_stacks.pop(name).stop()
        # canary@noobserve: the same endpoints, none naming where its predictions are (no body filter)
        unread = {"endpoints": list(Settings().endpoints)} if name == NO_OBSERVE else {}
        extra = canary_settings(self.work / f"canary-{label}", folder, self.store, ports, **unread)
        wait_ports_free(extra)
        workers = f"services.penguin_classifier.workers={a.extra_canary_workers}"
        t0 = time.monotonic()
        with environment(
            BENTOML_CONFIG_OPTIONS=workers if label == f"w{a.extra_canary_workers}" else None,
            PREDICTION_METRICS="false" if name == NO_METRICS else None,
        ):
            self.extra_stacks[name] = Stack(extra).start()
        made = {name: stack_subject(name, self.extra_stacks[name], by_part=False)}
        if name in ALIKE:
            made[columns(name)] = stack_subject(columns(name), self.extra_stacks[name], by_part=False, columnar=True)
        return round(time.monotonic() - t0, 2), made

    def fresh_stacks(self, rnd: int, subjects: dict[str, Subject], bodies: dict) -> None:
        """--fresh-stacks: the measured stacks compared with one another started anew (a different one first each
        round) on new free ports (a client's outgoing connection may take a port just let go), each warmed up."""
        names = [n for n in ALIKE if n in self.extra_stacks and (n in subjects or columns(n) in subjects)]
        names = names[rnd % len(names) :] + names[: rnd % len(names)] if names else []
        log(f"round {rnd + 1}: starting {', '.join(names)} anew ...")
        for name in names:
            try:
                _, made = self.start_extra_canary(name, self.args.extras[name], free_ports(4))
            except CanaryError as exc:  # e.g. a port taken between the choice and the start: once more, other ports
                log(f"{name} did not start ({exc}): again on other ports")
                _, made = self.start_extra_canary(name, self.args.extras[name], free_ports(4))
            subjects.update({key: subject for key, subject in made.items() if key in subjects})
        for key in [key for name in names for key in (name, columns(name)) if key in subjects]:
            subject = subjects[key]
            run_wrk(subject, subject.body(bodies, 1), 8, self.args.warmup)
            run_wrk(subject, subject.body(bodies, max(self.args.batches)), 2, 1)

    # -- main ------------------------------------------------------------------------------------------------
    def execute(self) -> None:
        a = self.args
        started = time.monotonic()
        deadline = started + 60 * a.max_minutes
        bodies = write_bodies(self.work / "bodies", a.batches)
        ports = free_ports(8 + 4 * len(a.extras))  # the canary 4, baseline, service, service@sklearn, floor
        extra_ports = dict(zip(a.extras, (ports[8 + 4 * i : 12 + 4 * i] for i in range(len(a.extras)))))
        settings = canary_settings(self.work / "canary", ROOT, self.store, ports[:4])

        log("timing the canary stack's cold start ...")
        cold = self.cold_starts(settings)
        self.results["cold_start_s"] = {
            "runs": cold,
            "median": statistics.median(cold),
            "goal": report.GOALS["cold_start_s"],
        }

        log("starting the baseline, the service (onnx, sklearn) and the framework floor ...")
        ready = {"canary_stack": statistics.median(cold)}
        subjects = {}
        baseline = baseline_child(ports[4], self.work, model_file(self.store, STABLE_VERSION))
        ready["baseline"] = self.start_child(baseline, f"http://{HOST}:{ports[4]}/health")
        subjects["baseline"] = Subject("baseline", f"http://{HOST}:{ports[4]}", [baseline])
        for name, runtime, port in (
            ("service", "onnx", ports[5]),
            ("service@sklearn", "sklearn", ports[6]),
            (FRAMEWORK_FLOOR, "constant", ports[7]),
        ):
            child = service_child(name.replace("@", "-"), ROOT, port, self.work, self.store, runtime)
            ready[name] = self.start_child(child, f"http://{HOST}:{port}/readyz")
            subjects[name] = Subject(name, f"http://{HOST}:{port}", [child])
        for name, folder in a.extras.items():
            kind, _, label = name.partition("@")
            port = extra_ports[name][0]
            if kind == "service":
                child = service_child(f"service-{label}", folder, port, self.work, self.store, runtime=None)
                ready[name] = self.start_child(child, f"http://{HOST}:{port}/readyz")
                subjects[name] = Subject(name, f"http://{HOST}:{port}", [child])
            else:
                ready[name], made = self.start_extra_canary(name, folder, extra_ports[name])
                subjects.update(made)
        self.results["ready_s"] = ready
        subjects["canary"] = stack_subject("canary", self.stack)
        subjects[COLUMNS] = stack_subject(COLUMNS, self.stack, columnar=True)
        subjects[NGINX_FLOOR] = Subject(NGINX_FLOOR, settings.url, [self.stack.children[-1]], method="GET")
        self.results["check"] = check_subjects(subjects, bodies)
        if a.subjects:
            wanted = set(a.subjects.split(","))
            wanted |= {COLUMNS} if "canary" in wanted else set()  # the canary's columnar batches come with it
            wanted |= {columns(name) for name in ALIKE if name in wanted}
            subjects = {name: t for name, t in subjects.items() if name in wanted}
        http = [t for t in subjects if t != NGINX_FLOOR]
        rows = [t for t in http if not subjects[t].columnar]  # the single-row points: row objects only

        self.results.setdefault("memory", {})["idle"] = self.memory(subjects)

        log("warming up every subject ...")
        for name in http:
            run_wrk(subjects[name], subjects[name].body(bodies, 1), 8, a.warmup)
            run_wrk(subjects[name], subjects[name].body(bodies, max(a.batches)), 2, 1)

        predictors = load_predictors(self.store)
        points = [
            Point("single", c, 1, [*rows, *([NGINX_FLOOR] if NGINX_FLOOR in subjects else [])]) for c in a.concurrency
        ]
        points += [
            Point("batch", a.batch_concurrency, n, list(http))
            for n in a.batches
            if not (n == 1 and a.batch_concurrency in a.concurrency)
        ]
        per_round = sum(len(p.subjects) for p in points) * (a.duration + 0.5)
        log(
            f"{a.repeats} rounds x {sum(len(p.subjects) for p in points)} runs x {a.duration} s "
            f"(~{per_round * a.repeats / 60:.1f} min)"
        )

        raw: dict = {}
        floors: list[dict] = []
        for rnd in range(a.repeats):
            if time.monotonic() > deadline:
                log(f"--max-minutes reached: stopping after {rnd} rounds")
                break
            if a.fresh_stacks and rnd > 0:
                try:
                    self.fresh_stacks(rnd, subjects, bodies)
                except CanaryError as exc:  # twice: keep the rounds measured, as --max-minutes does
                    log(f"a stack did not start again ({exc}): stopping after {rnd} rounds")
                    break
            floors.append(predict_floor(predictors, a.batches))
            for point in points:
                shift = rnd % len(point.subjects)
                order = point.subjects[shift:] + point.subjects[:shift]
                for name in order:
                    subject = subjects[name]
                    for again in range(DISTURBED_RETRIES + 1):
                        res = run_wrk(subject, subject.body(bodies, point.rows), point.connections, a.duration)
                        if res["other_cpu_pct"] <= DISTURBED_PCT or again == DISTURBED_RETRIES:
                            break
                        log(f"{point.key} {name}: others used {res['other_cpu_pct']:.0f}% of the CPU: measured again")
                    res["measured_again"] = again
                    raw.setdefault(point.key, {}).setdefault(name, []).append(res)
                    flag = f"  ERRORS {res['errors']}" if res["errors"] else ""
                    log(
                        f"round {rnd + 1}/{a.repeats} {point.key:>8} {name:<16} {res['rps']:>9.1f} req/s  "
                        f"p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:7.2f} ms  "
                        f"cpu {res['cpu_ms_per_req']:6.2f} ms/req  others {res['other_cpu_pct']:5.1f}%{flag}"
                    )
        self.results["raw"] = raw
        self.results["floor_rounds"] = floors
        self.results["points"] = {p.key: {"kind": p.kind, "connections": p.connections, "rows": p.rows} for p in points}

        self.results["memory"]["after_load"] = self.memory(subjects)
        self.results["canary_versions"] = version_split(settings.state_dir / "logs" / "access.log")
        after = self.results["memory"]["after_load"].get("canary", {})
        running = backends(self.stack)
        self.results["memory_per_version"] = {v: after[color] for v, (color, _) in running.items() if color in after}

        log("parity: every data row and the generated rows through each canary backend ...")
        self.results["parity"] = served_parity({v: url for v, (_, url) in running.items()}, self.store)

        if NO_METRICS in self.extra_stacks:
            cost = subprocess.run(
                [sys.executable, "-m", "bench.prediction_metrics_cost"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            self.results["prediction_metrics_cost"] = json.loads(cost.stdout) if cost.returncode == 0 else None
            log(f"prediction metrics, in process: {self.results['prediction_metrics_cost']}")

        if a.profile:
            log("profiling the service worker with py-spy under 32 connections ...")
            self.results["profile"] = profile_worker(subjects["service"], bodies[1], a.profile_seconds, self.work)
        self.results["elapsed_s"] = round(time.monotonic() - started, 1)


def git_commit(tree: Path = ROOT) -> str:
    with contextlib.suppress(Exception):
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True, check=False
        )
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
        for name in ("model.joblib", "model.onnx"):
            if not (store / "models" / MODEL_NAME / v / name).is_file():
                raise SystemExit(
                    f"error: {MODEL_NAME}:{v} has no {name} in {store} "
                    "(run `python train_model.py`, or with --force for models trained before ONNX)"
                )


def interrupt(*_) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the run like Ctrl-C: the finally block stops every process


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__.split("\n")[0])
    store = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser().absolute()
    preflight(store)
    work = Path(tempfile.mkdtemp(prefix="canary-bench-"))
    work.chmod(0o755)  # nginx workers (user nobody when started as root) buffer large bodies under the state dir
    signal.signal(signal.SIGTERM, interrupt)
    run = Run(args, work, store)
    meta = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": git_commit(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.splitlines()[0][:60],
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False).stderr.strip(),
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
    summary = report.summarize(results, args)
    if results.get("profile"):  # keep py-spy's folded stacks, gzipped, for a flame graph (zcat, then speedscope.app)
        import gzip

        folded = Path(results["profile"]["folded"])
        (args.out / f"{folded.name}.gz").write_bytes(gzip.compress(folded.read_bytes(), mtime=0))
        results["profile"]["folded"] = f"{folded.name}.gz"
    everything = {"meta": meta, "goals": report.GOALS, **summary, **{k: v for k, v in results.items()}}
    (args.out / "results.json").write_text(json.dumps(everything, indent=1, default=str) + "\n")
    (args.out / "results.md").write_text(writeup.markdown(summary, results, meta, args))
    writeup.chart(summary, args, args.out / "results.png")
    writeup.print_table(summary, results, args)
    log(f"wrote {args.out / 'results.json'}, results.md, results.png in {results['elapsed_s'] / 60:.1f} min")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
