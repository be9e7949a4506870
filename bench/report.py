"""bench.run's summary of a run: medians over rounds, the ratios and their goals (bench/writeup.py writes it up)."""

from __future__ import annotations

import argparse
import math
import statistics

from bench.servers import (
    COLUMNS,
    FRAMEWORK_FLOOR,
    GREEN_WEIGHT,
    NGINX_FLOOR,
    NO_METRICS,
    NO_OBSERVE,
    SHIPPED,
    TWIN,
    columns,
)
from penguin.features import CANDIDATE_VERSION, STABLE_VERSION

# The measures reported with a label, and the goal each is held to (reported, not asserted): key -> (label, format,
# (comparison, bound) or None). A ratio's key names the point it was measured at (c32: 32 connections, batch1000:
# 1,000-row requests), so a run at other points reports other keys, held to no goal.
MEASURES = {
    "canary_vs_baseline_rps_c32": ("canary / FastAPI baseline, req/s at 32 conns", "{:.2f}x", (">=", 3.0)),
    "canary_vs_baseline_p99_c32": ("canary / FastAPI baseline, p99 at 32 conns", "{:.2f}x", ("<=", 0.5)),
    "canary_vs_framework_floor_rps_c32": ("canary / framework floor, req/s at 32 conns", "{:.2f}x", (">=", 0.8)),
    "canary_rows_per_s_batch1000": ("canary rows/s, 1,000-row batches", "{:,.0f}", (">=", 150_000)),
    "parity_max_abs_prob_diff": ("served vs scikit-learn, largest probability difference", "{:.1e}", ("<=", 1e-6)),
    "cold_start_s": ("canary stack cold start (median)", "{:.1f} s", ("<", 10.0)),
    "quality_metrics_rps_ratio_c32": ("prediction metrics on / off, canary req/s at 32 conns", "{:.3f}x", (">=", 0.95)),
    "quality_metrics_rows_ratio_batch1000": (
        "prediction metrics on / off, canary rows/s at 1,000-row batches",
        "{:.3f}x",
        (">=", 0.95),
    ),
    "observed_predictions_rps_ratio_c32": (
        "predictions read in the answers on / off, canary req/s at 32 conns",
        "{:.3f}x",
        (">=", 0.95),
    ),
    "observed_predictions_rows_ratio_batch1000": (
        "predictions read in the answers on / off, canary columnar rows/s at 1,000-row batches",
        "{:.3f}x",
        (">=", 0.95),
    ),
    # the A/A control: two stacks as shipped, shipped / twin (no goal: how far a ratio moves when nothing differs)
    "aa_rps_ratio_c32": ("A/A: two stacks as shipped, canary req/s at 32 conns", "{:.3f}x", None),
    "aa_rows_ratio_batch1000": (
        "A/A: two stacks as shipped, canary columnar rows/s at 1,000-row batches",
        "{:.3f}x",
        None,
    ),
    "quality_metrics_cost_ratio_c32": (
        "prediction metrics' cost (in process) vs canary CPU per request, 32 conns",
        "{:.3f}x",
        None,
    ),
    "quality_metrics_cost_ratio_batch1000": (
        "prediction metrics' cost (in process) vs canary CPU, 1,000-row batches",
        "{:.3f}x",
        None,
    ),
    # the columnar form (/predict_columns) through the canary, against the row form and the model itself
    "canary_columnar_vs_rows_batch1000": (
        "canary rows/s at 1,000-row batches, columns / row objects",
        "{:.2f}x",
        (">=", 3.0),
    ),
    "canary_columnar_vs_inprocess_mix_batch1000": (
        "canary columnar rows/s / in-process ONNX 90/10 mix, 1,000 rows",
        "{:.2f}x",
        (">=", 0.25),
    ),
}
GOALS = {key: goal for key, (_, _, goal) in MEASURES.items() if goal is not None}
MET = {True: "yes", False: "no", None: "-"}  # a goal met, missed, or none set
# The on / off ratios (a cost the goal bounds) are judged on their interval, not on their median alone: "yes" when
# the whole interval meets the goal, "no" when none of it does, otherwise the run cannot tell ("inconclusive").
COMPARED = ("quality_metrics_", "observed_predictions_")
LEVEL = 0.95  # the interval's least coverage


def med(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def summarize(results: dict, args: argparse.Namespace) -> dict:
    table: dict = {}
    for key, by_subject in results["raw"].items():
        for name, runs in by_subject.items():
            table.setdefault(key, {})[name] = {
                "rps": med([r["rps"] for r in runs]),
                "rps_min": min(r["rps"] for r in runs),
                "rps_max": max(r["rps"] for r in runs),
                "p50_ms": med([r["p50_ms"] for r in runs]),
                "p99_ms": med([r["p99_ms"] for r in runs]),
                "cpu_ms_per_req": med([r["cpu_ms_per_req"] for r in runs]),
                "other_cpu_pct": med([r["other_cpu_pct"] for r in runs]),
                "errors": sum(r["errors"] for r in runs),
                **(
                    {
                        "cpu_ms_per_req_by_part": {
                            k: med([r["cpu_ms_per_req_by_part"][k] for r in runs])
                            for k in runs[0]["cpu_ms_per_req_by_part"]
                        }
                    }
                    if "cpu_ms_per_req_by_part" in runs[0]
                    else {}
                ),
                "rounds": len(runs),
            }
    rows_s: dict = {}
    points = results["points"]
    for n in args.batches:
        key = next(
            (k for k, p in points.items() if p["rows"] == n and p["connections"] == args.batch_concurrency), None
        )
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
    single = f"c{max(args.concurrency)}"  # the single-row point with the most connections
    big = str(max(args.batches))  # the batch point with the most rows
    ratios = single_ratios(table, single) | batch_ratios(rows_s, floor, f"batch{big}", big)
    # The prediction metrics' cost: the canary with them (as shipped) over the same canary without them, same rounds.
    # The median of the ratios of each round's back-to-back pair: on a shared host throughput drifts by 2x between
    # rounds, far more than the few percent measured here, and a pair measured seconds apart drifts least.
    for key, point in (
        (f"quality_metrics_rps_ratio_{single}", single),
        (f"quality_metrics_rows_ratio_batch{big}", f"rows{big}"),
    ):
        runs = results["raw"].get(point, {})
        if {SHIPPED, NO_METRICS} <= runs.keys():
            ratios[key] = round(statistics.median(per_round(runs, SHIPPED, NO_METRICS)), 3)
    # Reading the predictions in the answers (nginx's observe): a canary as shipped over one alike whose endpoints
    # name no JSON path (no body filter at all), same rounds; at 1,000 rows both asked in columns.
    # The A/A control: the same over a twin as shipped, the spread of a ratio when the two stacks differ in nothing.
    for key, point, (on, off) in (
        (f"observed_predictions_rps_ratio_{single}", single, (SHIPPED, NO_OBSERVE)),
        (f"observed_predictions_rows_ratio_batch{big}", f"rows{big}", (columns(SHIPPED), columns(NO_OBSERVE))),
        (f"aa_rps_ratio_{single}", single, (SHIPPED, TWIN)),
        (f"aa_rows_ratio_batch{big}", f"rows{big}", (columns(SHIPPED), columns(TWIN))),
    ):
        runs = results["raw"].get(point, {})
        if {on, off} <= runs.keys():
            ratios[key] = round(statistics.median(per_round(runs, on, off)), 3)
    # The same cost from a measurement the host's noise does not swamp: µs per answer in process (prediction_metrics_
    # cost.py, at 1 and 1,000 rows) over the canary's CPU per request at that point (all its processes), as a
    # throughput ratio.
    cost = results.get("prediction_metrics_cost") or {}
    for key, point, us in (
        (f"quality_metrics_cost_ratio_{single}", single, cost.get("us_per_answer_1row")),
        ("quality_metrics_cost_ratio_batch1000", "rows1000", cost.get("us_per_answer_1000rows")),
    ):
        cpu = table.get(point, {}).get(NO_METRICS, {}).get("cpu_ms_per_req")
        if us and cpu:
            ratios[key] = round(cpu * 1000 / (cpu * 1000 + us), 3)
    parity = results.get("parity") or {}
    if parity:
        ratios["parity_max_abs_prob_diff"] = max(p["max_abs_prob_diff"] for p in parity.values())
        ratios["parity_class_mismatches"] = sum(p["class_mismatches"] for p in parity.values())
    ratios["cold_start_s"] = results["cold_start_s"]["median"]
    exact = by_round(results["raw"].get(single, {}), single)  # unrounded: the intervals are taken from these
    batch = results["raw"].get(f"rows{big}", {})
    columnar = f"canary_columnar_vs_rows_batch{big}"
    if {"canary", COLUMNS} <= batch.keys():  # rows/s ratio of the two forms, each round (the same rows per request)
        exact[columnar] = per_round(batch, COLUMNS, "canary")
    for key, (on, off) in (
        (f"observed_predictions_rows_ratio_batch{big}", (columns(SHIPPED), columns(NO_OBSERVE))),
        (f"quality_metrics_rows_ratio_batch{big}", (SHIPPED, NO_METRICS)),
        (f"aa_rows_ratio_batch{big}", (columns(SHIPPED), columns(TWIN))),
    ):
        if {on, off} <= batch.keys():
            exact[key] = per_round(batch, on, off)
    intervals = {k: found for k, v in exact.items() if (found := median_interval(v)) is not None}
    return {
        "table": table,
        "rows_per_s": rows_s,
        "floor_rows_per_s": floor,
        "ratios": ratios,
        "ratios_by_round": {k: [round(r, 2 if k == columnar else 3) for r in v] for k, v in exact.items()},
        "ratios_interval": {
            k: [round(low, 3), round(high, 3), coverage] for k, (low, high, coverage) in intervals.items()
        },
    }


def median_interval(values: list[float], level: float = LEVEL) -> list[float] | None:
    """[low, high, coverage]: the order statistics that hold the median of the rounds' distribution with at least
    `level` probability (the sign test's interval: no assumption on that distribution, only rounds independent of
    one another); None for too few rounds (under 6 for 95%)."""
    n = len(values)
    ordered = sorted(values)
    found = None
    below = 0  # P(B < k) * 2**n, B ~ Binomial(n, 1/2): [k-th smallest, k-th largest] misses the median with 2 P(B < k)
    for k in range(1, n // 2 + 1):
        below += math.comb(n, k - 1)
        coverage = 1 - 2 * below / 2**n
        if coverage < level:  # narrower intervals only cover less
            break
        found = [ordered[k - 1], ordered[n - k], round(coverage, 3)]
    return found


def single_ratios(table: dict, point: str) -> dict[str, float]:
    """Req/s and p99 ratios at one single-row point (`point`, e.g. c32), each key ending in the point's name."""
    cells = table.get(point, {})
    ratios = {}

    def ratio(key: str, a: str, b: str, measure: str = "rps") -> None:
        if {a, b} <= cells.keys():
            ratios[f"{key}_{point}"] = round(cells[a][measure] / cells[b][measure], 2)

    for name in ["canary", *[n for n in cells if n.startswith(("canary@", "service"))]]:
        ratio(f"{name}_vs_baseline_rps", name, "baseline")
        ratio(f"{name}_vs_baseline_p99", name, "baseline", "p99_ms")
    ratio("canary_vs_framework_floor_rps", "canary", FRAMEWORK_FLOOR)
    ratio("service_vs_framework_floor_rps", "service", FRAMEWORK_FLOOR)  # the model's own cost, without nginx
    ratio("canary_vs_service_rps", "canary", "service")
    ratio("onnx_vs_sklearn_runtime_rps", "service", "service@sklearn")
    return ratios


def batch_ratios(rows_s: dict, floor: dict, point: str, rows: str) -> dict[str, float]:
    """Rows/s figures and ratios at the batch point of `rows` rows per request (named `point`, e.g. batch1000)."""
    ratios: dict[str, float] = {}
    canary, columnar = rows_s.get("canary", {}).get(rows), rows_s.get(COLUMNS, {}).get(rows)
    mix = floor["mix_90_10"][rows] if floor else None
    if canary is not None:
        ratios[f"canary_rows_per_s_{point}"] = round(canary)
        if mix:
            ratios[f"canary_{point}_vs_inprocess_onnx_mix"] = round(canary / mix, 2)
    if columnar is not None:
        ratios[f"canary_columnar_rows_per_s_{point}"] = round(columnar)
        if canary is not None:
            ratios[f"canary_columnar_vs_rows_{point}"] = round(columnar / canary, 2)
        if mix:
            ratios[f"canary_columnar_vs_inprocess_mix_{point}"] = round(columnar / mix, 2)
    return ratios


def per_round(runs: dict[str, list[dict]], a: str, b: str) -> list[float]:
    """a's req/s over b's in each round: the pair measured back to back, seconds apart."""
    return [x["rps"] / y["rps"] for x, y in zip(runs[a], runs[b])]


def by_round(runs: dict[str, list[dict]], point: str) -> dict[str, list[float]]:
    """The req/s ratios of subjects measured in the same round (minutes apart at most): how much the median moved."""
    pairs = {
        f"canary_vs_baseline_rps_{point}": ("canary", "baseline"),
        f"quality_metrics_rps_ratio_{point}": (SHIPPED, NO_METRICS),
        f"observed_predictions_rps_ratio_{point}": (SHIPPED, NO_OBSERVE),
        f"aa_rps_ratio_{point}": (SHIPPED, TWIN),
        f"canary_vs_framework_floor_rps_{point}": ("canary", FRAMEWORK_FLOOR),
    }
    return {key: per_round(runs, a, b) for key, (a, b) in pairs.items() if a in runs and b in runs}


def verdicts(summary: dict, results: dict) -> list[tuple[str, str, str, str]]:
    """(measure, result, goal, verdict) for every labelled measure that was measured. Verdict "yes" or "no"; for an
    on / off ratio with enough rounds, "yes" / "no" only when its whole interval is on one side of the goal, else
    "inconclusive (...)"; "-" (and goal "-") for a measure held to no goal."""
    r = summary["ratios"]
    intervals = summary.get("ratios_interval", {})
    out = []
    for key, (label, form, goal) in MEASURES.items():
        if key not in r:
            continue
        if goal is None:
            out.append((label, form.format(r[key]), "-", MET[None]))
            continue
        op, bound = goal
        met = {">=": r[key] >= bound, "<=": r[key] <= bound, "<": r[key] < bound}[op]
        if key == "parity_max_abs_prob_diff":
            met = met and r["parity_class_mismatches"] == 0
        verdict = MET[met]
        if key.startswith(COMPARED) and op == ">=" and (found := intervals.get(key)):
            low, high, coverage = found
            shown = f"{coverage:.0%} interval {form.format(low)} to {form.format(high)}"
            verdict = MET[low >= bound] if low >= bound or high < bound else f"inconclusive ({shown})"
        out.append((label, form.format(r[key]), f"{op} {form.format(bound)}", verdict))
    return out
