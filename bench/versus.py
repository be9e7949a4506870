"""Does the penguin path fall against an older commit? Whole bench.run runs of the canary stack, this tree and the
other in turn, each run a new stack (new processes), compared on the same three figures:

    git worktree add /tmp/old 4721b30
    python -m bench.versus /tmp/old --runs 4       # 4 runs of each, interleaved; JSON in bench/results/versus.json

Two processes of the same code differ in speed by several percent for as long as they run (memory layout, hash
seeds), so one pair of stacks cannot resolve a few percent: each run here starts its own, and the figures are the
medians over the runs, with every run's figure kept. Each tree's own bench.run measures it (its own kit, service and
nginx templates), with the same options.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.run import git_commit
from bench.servers import ROOT, log

FIGURES = {  # name -> where it is in a bench.run results.json
    "rps_c32": ("table", "c32", "canary", "rps"),
    "rows_per_s_batch1000": ("rows_per_s", "canary", "1000"),
    "columnar_rows_per_s_batch1000": ("rows_per_s", "canary@columns", "1000"),
}
RUN = ["--subjects", "canary", "--concurrency", "32", "--batches", "1000", "--cold-starts", "1", "--no-profile"]


def figures(results: dict) -> dict[str, float]:
    out = {}
    for name, path in FIGURES.items():
        value = results
        for key in path:
            value = value[key]
        out[name] = float(value)
    return out


def paired(runs: dict[str, list[dict[str, float]]], figure: str) -> list[float]:
    """This tree's figure over the other's, run by run (the two runs of a pair are back to back)."""
    return [a[figure] / b[figure] for a, b in zip(runs["this"], runs["other"])]


def bench_run(tree: Path, out: Path, repeats: int, duration: int) -> dict[str, float]:
    """One bench.run in `tree` (its own packages: the current folder comes first on sys.path)."""
    argv = [sys.executable, "-m", "bench.run", *RUN, "--repeats", str(repeats), "--duration", str(duration)]
    done = subprocess.run([*argv, "--out", str(out)], cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        output = (done.stdout[-1500:] + done.stderr[-1500:]).strip()
        raise SystemExit(f"error: bench.run in {tree} failed ({done.returncode}): {output}")
    return figures(json.loads((out / "results.json").read_text()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("other", type=Path, help="a checkout of the other commit (e.g. a git worktree)")
    p.add_argument("--runs", type=int, default=4, help="bench.run runs of each tree, interleaved [4]")
    p.add_argument("--repeats", type=int, default=2, help="rounds in each run [2]")
    p.add_argument("--duration", type=int, default=5, help="seconds of load per point and round [5]")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "versus.json")
    a = p.parse_args(argv)
    if not (a.other / "bench" / "run.py").is_file() or a.runs < 1 or a.repeats < 1 or a.duration < 1:
        p.error("OTHER must be a checkout with bench/run.py; runs, repeats and duration at least 1")
    other = a.other.resolve()
    trees = {"this": ROOT, "other": other}
    runs: dict[str, list[dict[str, float]]] = {"this": [], "other": []}
    with tempfile.TemporaryDirectory() as folder:
        for i in range(a.runs):
            for name in ("this", "other") if i % 2 == 0 else ("other", "this"):
                log(f"run {i + 1}/{a.runs}: {name} ({trees[name]}) ...")
                runs[name].append(bench_run(trees[name], Path(folder) / f"{name}-{i}", a.repeats, a.duration))
                log(f"  {runs[name][-1]}")
    medians = {name: {k: statistics.median(r[k] for r in found) for k in FIGURES} for name, found in runs.items()}
    # The figure of record: the median of each pair's ratio (run i of this tree over run i of the other, measured
    # minutes apart), as bench.run's on / off ratios are; the ratio of the medians is kept beside it.
    by_pair = {k: paired(runs, k) for k in FIGURES}
    ratios = {k: round(statistics.median(by_pair[k]), 3) for k in FIGURES}
    result = {
        "command": "python -m bench.versus " + " ".join(argv if argv is not None else sys.argv[1:]),
        "this": git_commit(),
        "other": git_commit(other),
        "runs": runs,
        "medians": medians,
        "this_over_other": ratios,
        "this_over_other_by_pair": {k: [round(r, 3) for r in found] for k, found in by_pair.items()},
        "ratio_of_medians": {k: round(medians["this"][k] / medians["other"][k], 3) for k in FIGURES},
    }
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    for k in FIGURES:
        log(f"{k:<32} this {medians['this'][k]:>12,.0f}  other {medians['other'][k]:>12,.0f}  by pair {ratios[k]:.3f}")
    log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
