"""Record what the rollout simulator (bench/rollout_sim.py) resamples: each penguin version's real answers to every row
of data/data.csv, and real per-request latencies through the canary stack. Run once; the result is committed.

    python -m bench.rollout_streams                  # both parts (~3 min on 2 cores), bench/data/rollout_streams.json
    python -m bench.rollout_streams --no-latency     # the answers only (offline: no server)

Answers: the versions are trained into a private BentoML home with train_model.py's recipes (v1.0.0 and v1.1.0 as
`make train` does, v1.2.0 the next declared one, v1.9.0 the weak one: logistic regression on bill depth alone), and
each answers every data row offline through penguin.predictor (the ONNX graph the service serves): the predicted
class and the top-class probability per row.

Latency: a canary stack (blue v1.0.0, green v1.2.0 at 50%) on 127.0.0.1 under `wrk` with 6 keep-alive connections for
`--seconds`; nginx's access log gives each answer's `request_time` (milliseconds, as nginx measures it) by version.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.servers import BENCH, HOST, ROOT, canary_settings, free_ports, log, wait_ports_free

OUT = BENCH / "data" / "rollout_streams.json"
VERSIONS = {
    "v1.0.0": [],  # train_model.py's defaults: v1.0.0 and v1.1.0
    "v1.2.0": ["--version", "v1.2.0", "--algorithm", "random_forest"],
    "v1.9.0": ["--version", "v1.9.0", "--algorithm", "logistic_regression", "--features", "bill_depth_mm"],
}


def train(store: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(store), "BENTOML_DO_NOT_TRACK": "true"}
    for version, argv in VERSIONS.items():
        log(f"training {version} into {store} ...")
        subprocess.run([sys.executable, "train_model.py", *argv, "--no-export"], cwd=ROOT, env=env, check=True)


def answers(store: Path) -> dict:
    """Per version: each data row's predicted class and top-class probability (the served ONNX graph)."""
    os.environ["BENTOML_HOME"] = str(store)
    import bentoml
    import pandas as pd

    from penguin import predictor
    from penguin.features import FEATURES, MODEL_NAME

    frame = pd.read_csv(ROOT / "data" / "data.csv")
    columns = {name: [None if pd.isna(v) else v for v in frame[name].tolist()] for name in FEATURES}
    found = {}
    for version in ("v1.0.0", "v1.1.0", "v1.2.0", "v1.9.0"):
        model = bentoml.models.get(f"{MODEL_NAME}:{version}")
        served = predictor.load("onnx", model.path_of, model.info.metadata["classes"])
        proba = served.predict_proba(columns)
        top = proba.argmax(axis=1)
        found[version] = {
            "predicted": [served.classes[i] for i in top.tolist()],
            "confidence": [round(float(p), 6) for p in proba.max(axis=1).tolist()],
            "accuracy": round(float((frame["target"].to_numpy() == [served.classes[i] for i in top]).mean()), 4),
        }
        shares = Counter(found[version]["predicted"])
        log(f"{version}: accuracy {found[version]['accuracy']:.3f}, classes {dict(shares)}")
    return {"labels": frame["target"].tolist(), "versions": found}


def latencies(store: Path, seconds: int) -> dict:
    """request_time (ms) of every /predict answer by version, through nginx at 50/50 under 6 connections."""
    from canary_kit.stacks.local import Stack
    from canary_kit.stacks.targets import LocalTarget
    from canary_kit.steer.control import set_weight

    work = Path(tempfile.mkdtemp(prefix="rollout-streams-"))
    settings = canary_settings(work / "canary", ROOT, store, free_ports(4))
    settings = settings.model_copy(update={"green_version": "v1.2.0"})
    wait_ports_free(settings)
    body = work / "body.json"
    from penguin.features import EXAMPLE

    body.write_text(json.dumps({"instances": [dict(EXAMPLE)]}))
    stack = Stack(settings).start()
    try:
        target = LocalTarget(settings.state_dir)
        set_weight(target, 50, reason="rollout_streams: latency")
        mark = target.log_mark()
        log(f"wrk -c6 for {seconds}s through {settings.url} (blue v1.0.0 / green v1.2.0 at 50%) ...")
        argv = ["wrk", "-t2", "-c6", f"-d{seconds}s", "-s", str(BENCH / "wrk_post.lua"), settings.url + "/predict"]
        subprocess.run(argv, env={**os.environ, "WRK_BODY_FILE": str(body)}, check=True, capture_output=True)
        time.sleep(1)
        by_version: dict[str, Counter] = {}
        for entry in target.log_since(mark):
            if entry.get("uri") == "/predict" and entry.get("status") == 200 and not entry.get("shadow"):
                ms = int(round(float(entry["request_time"]) * 1000))
                by_version.setdefault(str(entry.get("version")), Counter())[ms] += 1
    finally:
        stack.stop()
    out = {}
    for version, counts in sorted(by_version.items()):
        total = sum(counts.values())
        out[version] = {"requests": total, "rps": round(total / seconds, 1), "ms": dict(sorted(counts.items()))}
        log(f"{version}: {total} answers, {total / seconds:.0f}/s")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-latency", action="store_true", help="record the answers only (keep the latencies on file)")
    p.add_argument("--seconds", type=int, default=30, help="seconds of load for the latencies [30]")
    p.add_argument("--out", type=Path, default=OUT, help=f"where to write [{OUT.relative_to(ROOT)}]")
    args = p.parse_args(argv)
    store = Path(tempfile.mkdtemp(prefix="rollout-streams-bentoml-"))
    train(store)
    recorded = {"source": __doc__.split("\n\n")[0].replace("\n", " "), **answers(store)}
    if args.no_latency:
        recorded["latency"] = json.loads(args.out.read_text())["latency"] if args.out.is_file() else {}
    else:
        setup = {"host": HOST, "connections": 6, "seconds": args.seconds, "blue": "v1.0.0", "green": "v1.2.0"}
        recorded["latency"] = {"setup": setup, "versions": latencies(store, args.seconds)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(recorded, separators=(",", ":")) + "\n")
    log(f"written {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
