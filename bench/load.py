"""The load bench.run puts on each subject: the request bodies, one wrk run (rates, latency, CPU) and the check that
every subject answers alike before anything is recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from bench.servers import BENCH, FRAMEWORK_FLOOR, Subject, cpu_seconds, machine_busy_seconds
from penguin.features import EXAMPLE, FEATURES, STABLE_VERSION

LUA = BENCH / "wrk_post.lua"


def run_wrk(subject: Subject, body: Path | None, connections: int, duration: int) -> dict:
    """One wrk run; requests/s, latency percentiles (ms), errors, and the CPU the subject's processes used."""
    argv = [
        "wrk",
        f"-t{min(2, connections)}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        subject.url + subject.path(),
    ]
    env = {**os.environ, "WRK_BODY_FILE": str(body) if body and subject.method == "POST" else ""}
    parts0 = {name: cpu_seconds(children) for name, children in subject.parts.items()}
    cpu0, busy0, wall0 = cpu_seconds(subject.children), machine_busy_seconds(), time.monotonic()
    usage0 = os.times()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 60, check=False)
    usage1 = os.times()
    cpu1, busy1, wall1 = cpu_seconds(subject.children), machine_busy_seconds(), time.monotonic()
    parts = {name: 1000 * (cpu_seconds(children) - parts0[name]) for name, children in subject.parts.items()}
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    w = json.loads(line.removeprefix("WRK_JSON "))
    seconds = w["duration_us"] / 1e6
    wrk_cpu = (usage1.children_user - usage0.children_user) + (usage1.children_system - usage0.children_system)
    subject_cpu = cpu1 - cpu0
    other = max(0.0, (busy1 - busy0) - subject_cpu - wrk_cpu)
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
        "cpu_ms_per_req": round(1000 * subject_cpu / max(1, w["requests"]), 3),
        **(
            {"cpu_ms_per_req_by_part": {k: round(v / max(1, w["requests"]), 3) for k, v in parts.items()}}
            if parts
            else {}
        ),
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


def check_subjects(subjects: dict[str, Subject], bodies: dict[int, Path]) -> dict:
    """Every subject answers 200 with the same predictions for the example before any load is recorded."""
    import httpx

    seen = {}
    with httpx.Client(timeout=10, trust_env=False) as client:
        for name, t in subjects.items():
            if t.method == "GET":
                r = client.get(t.url + t.path())
                if r.status_code != 200:
                    raise RuntimeError(f"{name}: GET {t.path()} -> {r.status_code}")
                continue
            for n in (1, max(bodies)):
                r = client.post(
                    t.url + t.path(),
                    content=t.body(bodies, n).read_bytes(),
                    headers={"content-type": "application/json"},
                )
                if r.status_code != 200:
                    raise RuntimeError(f"{name}: POST {t.path()} ({n} rows) -> {r.status_code}: {r.text[:300]}")
                data = r.json()
                if len(data["predictions"]) != n or "x-model-version" not in r.headers:
                    raise RuntimeError(f"{name}: unexpected answer {r.text[:300]}")
                if t.columnar:  # the same answer as row objects: {"probabilities": [{class: p}, ...]}
                    data["probabilities"] = [
                        dict(zip(data["probabilities"], p)) for p in zip(*data["probabilities"].values())
                    ]
            if r.headers["x-model-version"] == STABLE_VERSION and name != FRAMEWORK_FLOOR:  # the floor has no model
                seen[name] = (data["predictions"][0], data["probabilities"][0])
    first = next(iter(seen.values()))
    differ = [
        name
        for name, (label, proba) in seen.items()
        if label != first[0] or max(abs(proba[c] - first[1][c]) for c in proba) > 1e-6
    ]
    if differ:
        raise RuntimeError(f"subjects disagree on the example: {differ} vs {first}")
    return {"example_prediction": first[0], "example_probabilities": first[1]}
