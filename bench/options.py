"""bench.run's command line: the options, their defaults (full run or --quick) and the extra subjects they add."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.servers import BENCH, NO_METRICS, NO_OBSERVE, ROOT, SHIPPED, TWIN


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    """bench.run's options; `description` is its docstring (the help's text)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=None, help="seconds of load per point and round [10; quick 2]")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds per point (medians) [3]")
    p.add_argument("--quick", action="store_true", help="short smoke run: 2 s points, 1 cold start, no profile")
    p.add_argument("--concurrency", default="1,8,32", help="connections for the single-row points [1,8,32]")
    p.add_argument("--batches", default="1,100,1000", help="rows per request for the rows/s points [1,100,1000]")
    p.add_argument("--batch-concurrency", type=int, default=8, help="connections for the batch points [8]")
    p.add_argument("--cold-starts", type=int, default=None, help="canary stack cold starts to time [3; quick 1]")
    p.add_argument("--warmup", type=int, default=2, help="seconds of unrecorded load per subject first [2]")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of the service worker")
    p.add_argument("--profile-seconds", type=int, default=10, help="length of the profiled load [10]")
    p.add_argument(
        "--extra-service",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also measure, as service@NAME, the service.py of another project folder (e.g. `git archive`)",
    )
    p.add_argument(
        "--extra-canary",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also measure, as canary@NAME, a second canary stack run from another project folder",
    )
    p.add_argument(
        "--extra-canary-workers",
        type=int,
        default=0,
        metavar="N",
        help="also measure, as canary@wN, a canary stack whose backends run N workers each "
        "(BENTOML_CONFIG_OPTIONS, no code change) [0 = off]",
    )
    p.add_argument(
        "--extra-canary-no-metrics",
        action="store_true",
        help="also measure, as canary@nometrics, a canary stack whose backends export no prediction "
        "metrics (PREDICTION_METRICS=false), against canary@shipped: their cost, as quality_metrics_* ratios",
    )
    p.add_argument(
        "--extra-canary-no-observe",
        action="store_true",
        help="also measure, as canary@noobserve, a canary stack whose nginx reads no predictions in the answers (no "
        "endpoint names a JSON path), against canary@shipped: the cost of reading them, observed_predictions_*",
    )
    p.add_argument(
        "--extra-canary-twin",
        action="store_true",
        help="also measure, as canary@twin, a second canary stack exactly as shipped, against canary@shipped: the A/A "
        "control of the on / off ratios (aa_* ratios: how far two stacks that differ in nothing measure)",
    )
    p.add_argument(
        "--fresh-stacks",
        action="store_true",
        help="start the extra canary stacks compared with one another (shipped, nometrics, noobserve, twin) anew "
        "before every round: each round's pair is a new pair of processes, so a ratio's median is over as many "
        "process pairs as rounds, not over one",
    )
    p.add_argument(
        "--subjects",
        "--targets",
        default=None,
        dest="subjects",
        help="measure only these (comma-separated names), e.g. for A/B runs",
    )
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
    if args.extra_canary_workers > 1:
        extras[f"canary@w{args.extra_canary_workers}"] = ROOT
    if args.extra_canary_no_metrics:
        extras[SHIPPED] = extras[NO_METRICS] = ROOT
    if args.extra_canary_no_observe:
        extras[SHIPPED] = extras[NO_OBSERVE] = ROOT
    if args.extra_canary_twin:
        extras[SHIPPED] = extras[TWIN] = ROOT
    args.extras = extras
    if args.duration < 1 or args.repeats < 1 or min(args.concurrency + args.batches) < 1:
        p.error("durations, repeats, connections and batch sizes must be at least 1")
    return args
