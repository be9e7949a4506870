"""bench.run's reporting: medians over rounds, ratios and goals, results.md, the chart and the console table."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.servers import COLUMNS, FRAMEWORK_FLOOR, GREEN_WEIGHT, NGINX_FLOOR
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
        if {"canary", "canary@nometrics"} <= runs.keys():
            pairs = [x["rps"] / y["rps"] for x, y in zip(runs["canary"], runs["canary@nometrics"])]
            ratios[key] = round(statistics.median(pairs), 3)
    # The same cost from a measurement the host's noise does not swamp: µs per answer in process (prediction_metrics_
    # cost.py, at 1 and 1,000 rows) over the canary's CPU per request at that point (all its processes), as a
    # throughput ratio.
    cost = results.get("prediction_metrics_cost") or {}
    for key, point, us in (
        (f"quality_metrics_cost_ratio_{single}", single, cost.get("us_per_answer_1row")),
        ("quality_metrics_cost_ratio_batch1000", "rows1000", cost.get("us_per_answer_1000rows")),
    ):
        cpu = table.get(point, {}).get("canary@nometrics", {}).get("cpu_ms_per_req")
        if us and cpu:
            ratios[key] = round(cpu * 1000 / (cpu * 1000 + us), 3)
    parity = results.get("parity") or {}
    if parity:
        ratios["parity_max_abs_prob_diff"] = max(p["max_abs_prob_diff"] for p in parity.values())
        ratios["parity_class_mismatches"] = sum(p["class_mismatches"] for p in parity.values())
    ratios["cold_start_s"] = results["cold_start_s"]["median"]
    rounds = by_round(results["raw"].get(single, {}), single)
    batch = results["raw"].get(f"rows{big}", {})
    if {"canary", COLUMNS} <= batch.keys():  # rows/s ratio of the two forms, each round (the same rows per request)
        rounds[f"canary_columnar_vs_rows_batch{big}"] = [
            round(x["rps"] / y["rps"], 2) for x, y in zip(batch[COLUMNS], batch["canary"])
        ]
    return {
        "table": table,
        "rows_per_s": rows_s,
        "floor_rows_per_s": floor,
        "ratios": ratios,
        "ratios_by_round": rounds,
    }


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


def by_round(runs: dict[str, list[dict]], point: str) -> dict[str, list[float]]:
    """The req/s ratios of subjects measured in the same round (minutes apart at most): how much the median moved."""
    pairs = {
        f"canary_vs_baseline_rps_{point}": ("canary", "baseline"),
        f"quality_metrics_rps_ratio_{point}": ("canary", "canary@nometrics"),
        f"canary_vs_framework_floor_rps_{point}": ("canary", FRAMEWORK_FLOOR),
    }
    return {
        key: [round(x["rps"] / y["rps"], 2) for x, y in zip(runs[a], runs[b])]
        for key, (a, b) in pairs.items()
        if a in runs and b in runs
    }


def verdicts(summary: dict, results: dict) -> list[tuple[str, str, str, bool | None]]:
    """(measure, result, goal, met) for every labelled measure that was measured; goal "-" and met None: no goal."""
    r = summary["ratios"]
    out = []
    for key, (label, form, goal) in MEASURES.items():
        if key not in r:
            continue
        if goal is None:
            out.append((label, form.format(r[key]), "-", None))
            continue
        op, bound = goal
        met = {">=": r[key] >= bound, "<=": r[key] <= bound, "<": r[key] < bound}[op]
        if key == "parity_max_abs_prob_diff":
            met = met and r["parity_class_mismatches"] == 0
        out.append((label, form.format(r[key]), f"{op} {form.format(bound)}", met))
    return out


def ordered(args: argparse.Namespace) -> list[str]:
    """Subjects in reading order: baseline, our service (and variants), the floor, the canary (and variants), nginx."""
    extras = list(args.extras)
    return [
        "baseline",
        "service",
        "service@sklearn",
        *[e for e in extras if e.startswith("service@")],
        FRAMEWORK_FLOOR,
        "canary",
        COLUMNS,
        *[e for e in extras if e.startswith("canary@")],
        NGINX_FLOOR,
    ]


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def markdown(summary: dict, results: dict, meta: dict, args: argparse.Namespace) -> str:
    t = summary["table"]
    names = ordered(args)
    lines = [
        "# Benchmark results",
        "",
        (
            f"{meta['date']} · {meta['cpus']} CPUs (shared) · commit {meta['commit']} · wrk · "
            f"{args.duration} s per point · "
            f"{args.repeats} interleaved rounds, medians (req/s range min–max over rounds) · `{meta['command']}`"
        ),
        "",
        "## Single-row POST /predict",
        "",
        "| subject | conns | req/s | range | p50 ms | p99 ms | CPU ms/req | others' CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in args.concurrency:
        for name in names:
            cell = t.get(f"c{c}", {}).get(name)
            if cell:
                label = "nginx /_nginx/ping (floor)" if name == NGINX_FLOOR else name
                spread = f"{fmt_rate(cell['rps_min'])}–{fmt_rate(cell['rps_max'])}"
                lines.append(
                    f"| {label} | {c} | {fmt_rate(cell['rps'])} | {spread} | {cell['p50_ms']:.2f} | "
                    f"{cell['p99_ms']:.2f} | {cell['cpu_ms_per_req']:.2f} | {cell['other_cpu_pct']:.0f} |"
                )
    for c in args.concurrency:
        parts = t.get(f"c{c}", {}).get("canary", {}).get("cpu_ms_per_req_by_part")
        if parts:
            lines.append(
                f"\nCanary CPU ms per request at {c} conns, by process: "
                + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
                + "."
            )
    lines += [
        "",
        (
            "CPU ms/req: CPU time of all the subject's processes divided by requests served (less sensitive "
            "to other load than req/s). Others' CPU %: the rest of the machine's busy time during the run "
            "(other people's jobs, our idle servers), in % of one core."
        ),
        "",
        f"## Rows/s by batch size ({args.batch_concurrency} connections)",
        "",
    ]
    sizes = [str(n) for n in args.batches]
    lines += ["| subject | " + " | ".join(f"{n} rows" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for name in [n for n in names if n in summary["rows_per_s"]]:
        lines.append(f"| {name} | " + " | ".join(fmt_rate(summary["rows_per_s"][name].get(n, 0)) for n in sizes) + " |")
    for v, label in (
        (STABLE_VERSION, "in-process ONNX v1.0.0 (floor)"),
        (CANDIDATE_VERSION, "in-process ONNX v1.1.0"),
        ("mix_90_10", "in-process ONNX 90/10 mix"),
        (f"sklearn {STABLE_VERSION}", "in-process sklearn v1.0.0"),
    ):
        if v in summary["floor_rows_per_s"]:
            floor = summary["floor_rows_per_s"][v]
            lines.append(f"| {label} | " + " | ".join(fmt_rate(floor[n]) for n in sizes) + " |")
    lines += ["", "## Goals (reported, not asserted)", "", "| measure | result | goal | met |", "|---|---:|---:|:---:|"]
    for label, value, goal, ok in verdicts(summary, results):
        lines.append(f"| {label} | {value} | {goal} | {MET[ok]} |")
    for key, values in summary.get("ratios_by_round", {}).items():
        lines.append(f"\n{key} in each round (same-round pairs): {', '.join(f'{v:.2f}' for v in values)}.")
    parity = results.get("parity") or {}
    if parity:
        lines += [
            "",
            "## Parity of the served answers (canary backends vs scikit-learn)",
            "",
            "| version | rows (data + generated) | largest probability difference | class mismatches |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {v} | {p['rows']:,} ({p['data_rows']} + {p['generated_rows']:,}) | {p['max_abs_prob_diff']:.1e} | "
            f"{p['class_mismatches']} |"
            for v, p in parity.items()
        ]
    cold = results["cold_start_s"]
    mem = results["memory"]
    lines += [
        "",
        "## Cold start and memory",
        "",
        (
            f"- Canary stack cold start (`Stack.start()` until blue, green and nginx answer): "
            f"{', '.join(f'{x:.1f}' for x in cold['runs'])} s (median {cold['median']:.1f} s), using "
            f"{', '.join(f'{x:.1f}' for x in results.get('cold_start_cpu_s', []))} CPU-seconds in its processes. "
            f"Alone, one `bentoml serve` was ready in {results['ready_s']['service']:.1f} s, the baseline in "
            f"{results['ready_s']['baseline']:.1f} s."
        ),
        "",
        "| processes | state | RSS MiB | PSS MiB | processes |",
        "|---|---|---:|---:|---:|",
    ]
    for state in ("idle", "after_load"):
        for name, m in mem[state].items():
            if "total" in m:
                rows = [(f"{name} stack (total)", m["total"])]
                rows += [(f"&nbsp;&nbsp;{part}", m[part]) for part in ("blue", "green", "nginx")]
            else:
                rows = [(name, m)]
            for label, x in rows:
                lines.append(f"| {label} | {state} | {x['rss_mib']:.0f} | {x['pss_mib']:.0f} | {x['processes']} |")
    per_version = results.get("memory_per_version") or {}
    if per_version:
        lines += [
            "",
            "Memory per version after load (one `bentoml serve` each: supervisor + 1 worker): "
            + ", ".join(f"{v} {m['rss_mib']:.0f} MiB RSS ({m['pss_mib']:.0f} MiB PSS)" for v, m in per_version.items())
            + ".",
        ]
    split = results.get("canary_versions") or {}
    total = sum(split.values())
    if total:
        lines += [
            "",
            "Canary split over all benchmark requests (nginx access log): "
            + ", ".join(f"{v} {n:,} ({100 * n / total:.1f}%)" for v, n in sorted(split.items())),
        ]
    prof = results.get("profile")
    if prof:
        lines += [
            "",
            f"## Profile: service worker at 32 connections (py-spy, {prof['busy_samples']} busy samples)",
            "",
            "| part | share of busy worker time |",
            "|---|---:|",
        ]
        lines += [
            f"| {label.replace(' ', '&nbsp;', 2) if label.startswith(' ') else label} | {pct:.0f}% |"
            for label, pct in prof["parts_pct"].items()
        ]
    lines += [
        "",
        (
            "Reproduce: `BENTOML_HOME=/tmp/bench-home make bench` (or `python -m bench.run --quick`). "
            "Raw per-round numbers are in results.json."
        ),
        "",
    ]
    return "\n".join(lines)


def chart(summary: dict, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = summary["table"]
    names = [n for n in ordered(args) if n != NGINX_FLOOR and any(n in t.get(f"c{c}", {}) for c in args.concurrency)]
    colors = {
        "baseline": "#999999",
        "service": "#4c72b0",
        "service@sklearn": "#8da0cb",
        FRAMEWORK_FLOOR: "#55a868",
        "canary": "#dd8452",
        "canary@w2": "#c44e52",
    }
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
            right.plot(
                [int(n) for n in sizes],
                [summary["rows_per_s"][name].get(n) for n in sizes],
                marker="o",
                label=name,
                color=colors.get(name),
            )
    floor = summary["floor_rows_per_s"]
    if floor:
        right.plot(
            [int(n) for n in sizes],
            [floor[STABLE_VERSION][n] for n in sizes],
            "k--",
            marker=".",
            label="in-process ONNX v1.0.0",
        )
        right.plot(
            [int(n) for n in sizes],
            [floor["mix_90_10"][n] for n in sizes],
            "k:",
            marker=".",
            label="in-process ONNX 90/10 mix",
        )
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
    print(f"{'subject':<18}" + "".join(f"{'c=' + str(c):>26}" for c in args.concurrency))
    for name in names:
        cells = [t.get(f"c{c}", {}).get(name) for c in args.concurrency]
        print(
            f"{name:<18}"
            + "".join(
                f"{fmt_rate(x['rps']):>9} ({x['p50_ms']:6.1f} /{x['p99_ms']:6.1f})" if x else f"{'-':>26}"
                for x in cells
            )
        )
    print(f"\nrows/s at {args.batch_concurrency} connections")
    print(f"{'subject':<18}" + "".join(f"{str(n) + ' rows':>14}" for n in args.batches))
    for name, row in summary["rows_per_s"].items():
        print(f"{name:<18}" + "".join(f"{fmt_rate(row.get(str(n), 0)):>14}" for n in args.batches))
    for v in summary["floor_rows_per_s"]:
        floor = summary["floor_rows_per_s"][v]
        print(f"{'floor ' + v:<18}" + "".join(f"{fmt_rate(floor[str(n)]):>14}" for n in args.batches))
    print("\ngoals")
    for label, value, goal, ok in verdicts(summary, results):
        print(f"  {label:<52} {value:>8}  goal {goal:<8} {'met' if ok else 'NOT met' if ok is False else ''}")
    for version, m in (results.get("memory_per_version") or {}).items():
        print(f"  {version} (one bentoml serve) after load: RSS {m['rss_mib']:.0f} MiB, PSS {m['pss_mib']:.0f} MiB")
    m = results["memory"]["after_load"]["canary"]["total"]
    print(
        f"  canary stack memory after load: RSS {m['rss_mib']:.0f} MiB, PSS {m['pss_mib']:.0f} MiB, "
        f"{m['processes']} processes"
    )
