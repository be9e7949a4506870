"""Benchmark the ledger of answers: ingest N answers from an nginx access log, join labels, ask for the quality.

    python -m bench.ledger                      # 1,000,000 answers (goals: ingest < 60 s, quality < 1 s)
    python -m bench.ledger --answers 100000     # a smaller run

The log is written in nginx's own format (nginx/canary.conf.template's canary_json), one row per request, two
versions 90/10, in a temporary folder; results in bench/results/ledger.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.servers import ROOT
from canary_kit.observe import labels as labelling
from canary_kit.observe import ledger, ledger_queries

CLASSES = ["Adelie", "Chinstrap", "Gentoo"]
GOALS = {"ingest_s": 60.0, "quality_s": 1.0}


def write_log(path: Path, answers: int, seed: int = 0) -> list[str]:
    """`answers` access-log lines as nginx writes them; returns the request ids."""
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(hours=2)
    ids = []
    with open(path, "w") as log:
        for i in range(answers):
            rid = f"{rng.getrandbits(128):032x}"
            green = rng.random() < 0.1
            entry = {
                "time": (start + timedelta(milliseconds=7 * i)).isoformat(timespec="seconds"),
                "request_id": rid,
                "method": "POST",
                "uri": "/predict",
                "status": 200,
                "route": "green" if green else "blue",
                "upstream": "127.0.0.1:3001",
                "version": "v1.1.0" if green else "v1.0.0",
                "upstream_status": "200",
                "request_time": 0.004,
                "upstream_response_time": "0.004",
                "shadow": False,
                "mirrored": "off",
                "pin": "",
                "predictions": rng.choice(CLASSES),
                "worker": 1234,
            }
            log.write(json.dumps(entry, separators=(",", ":")) + "\n")
            ids.append(rid)
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=1_000_000)
    parser.add_argument("--labelled", type=float, default=0.1, help="share of answers that get a label [0.1]")
    parser.add_argument("--repeats", type=int, default=5, help="quality queries timed (median) [5]")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ledger.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        folder = Path(tmp)
        log = folder / "access.log"
        t0 = time.perf_counter()
        ids = write_log(log, args.answers)
        print(
            f"wrote {args.answers:,} log lines ({log.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s"
        )
        with ledger.connect(folder) as conn:
            t0 = time.perf_counter()
            added = ledger.ingest_file(conn, log)
            ingest = time.perf_counter() - t0
            print(f"ingested {added:,} answers in {ingest:.1f} s ({added / ingest:,.0f} rows/s)")
            t0 = time.perf_counter()
            again = ledger.ingest_file(conn, log)
            reread = time.perf_counter() - t0
            rng = random.Random(1)
            chosen = rng.sample(ids, int(len(ids) * args.labelled))
            text = "request_id,label\n" + "".join(f"{rid},{rng.choice(CLASSES)}\n" for rid in chosen)
            t0 = time.perf_counter()
            parsed = labelling.parse(text.encode(), set(CLASSES))
            labelling.check_rows(conn, parsed)
            applied = labelling.apply(conn, parsed.labels)
            labelling_s = time.perf_counter() - t0
            print(f"joined {sum(applied.joined.values()):,} labels in {labelling_s:.1f} s")
            timings = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                found = ledger_queries.quality(conn, ["v1.0.0", "v1.1.0"])
                timings.append(time.perf_counter() - t0)
            quality = statistics.median(timings)
            print(
                f"quality over {args.answers:,} answers: {quality * 1000:.0f} ms (median of {args.repeats}); "
                f"{ {v: (q.labelled, q.correct) for v, q in found.items()} }"
            )
        size = (folder / ledger.LEDGER).stat().st_size
    results = {
        "answers": args.answers,
        "ingest_s": round(ingest, 2),
        "rows_per_s": round(added / ingest),
        "reingest_added": again,
        "reingest_s": round(reread, 3),
        "labels": len(chosen),
        "labels_s": round(labelling_s, 2),
        "quality_s": round(quality, 3),
        "ledger_mb": round(size / 1e6, 1),
        "goals": GOALS,
        "met": {
            k: results_ok
            for k, results_ok in (("ingest_s", ingest < GOALS["ingest_s"]), ("quality_s", quality < GOALS["quality_s"]))
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return 0 if all(results["met"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
