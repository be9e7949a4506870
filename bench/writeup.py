"""bench.run's write-up of a summary: results.md, the chart (results.png) and the console table."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.report import verdicts
from bench.servers import COLUMNS, FRAMEWORK_FLOOR, NGINX_FLOOR
from penguin.features import CANDIDATE_VERSION, STABLE_VERSION


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
    for label, value, goal, verdict in verdicts(summary, results):
        lines.append(f"| {label} | {value} | {goal} | {verdict} |")
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
    shown = {"yes": "met", "no": "NOT met", "-": ""}
    for label, value, goal, verdict in verdicts(summary, results):
        print(f"  {label:<52} {value:>8}  goal {goal:<8} {shown.get(verdict, verdict)}")
    for version, m in (results.get("memory_per_version") or {}).items():
        print(f"  {version} (one bentoml serve) after load: RSS {m['rss_mib']:.0f} MiB, PSS {m['pss_mib']:.0f} MiB")
    m = results["memory"]["after_load"]["canary"]["total"]
    print(
        f"  canary stack memory after load: RSS {m['rss_mib']:.0f} MiB, PSS {m['pss_mib']:.0f} MiB, "
        f"{m['processes']} processes"
    )
