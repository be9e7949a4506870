"""A rollout's report: rollout-<time>.json (everything), .md (a table per window, every gate's figure and mark) and
.svg (green's weight and error rate over time, and a grid of every gate at every check: pass, fail, dry-run fail,
inconclusive)."""

from __future__ import annotations

import json
from dataclasses import asdict
from html import escape
from pathlib import Path

from canary_kit.rollout import Check, Rollout
from canary_kit.spec import GATES
from canary_kit.views import figures_line

COLOURS = {"pass": "#27ae60", "fail": "#c0392b", "inconclusive": "#95a5a6", "skipped": "#ecf0f1", "dry-run": "#e67e22"}
SHORT = {
    "max_error_rate": "5xx rate",
    "max_p99_ms": "p99 ms",
    "max_p99_ratio": "p99 ratio",
    "srm_p_value": "SRM p",
    "max_class_divergence": "class div.",
    "max_confidence_drop": "conf. drop",
    "min_agreement": "agreement",
    "max_accuracy_drop": "acc. drop",
    "max_ks_distance": "KS dist.",
    "max_mean_shift": "mean shift",
    "max_error_increase": "error incr.",
}


def figure(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def mark(gate: dict) -> str:
    if gate["status"] == "skipped":
        return "skipped"
    return f"{gate['status']} (dry-run)" if gate["dry_run"] else gate["status"]


def write_report(result: Rollout, folder: Path) -> Path:
    """rollout-<time>.json, .md and .svg in `folder`; returns the Markdown file."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"rollout-{result.started.replace(':', '').replace('+0000', 'Z')}"
    stem.with_suffix(".json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    stem.with_suffix(".svg").write_text(chart(result.checks))
    rows = []
    for c in result.checks:
        gates = "<br>".join(f"{g['name']} {figure(g['figure'])} / {g['threshold']:g}: {mark(g)}" for g in c.gates)
        rows.append(
            f"| {c.at:.0f} | {c.step} | {c.weight}% | {c.verdict} | {figures_line(c.green)} | {figures_line(c.blue)} | "
            f"{gates or '-'} | {c.reason} |"
        )
    shadow = ""
    if result.shadow:
        gate = result.shadow.get("gate") or {}
        shadow = (
            f"\nShadow phase: agreement {result.shadow.get('agreement')} (95% interval "
            f"{result.shadow.get('agreement_95')}) over {result.shadow.get('rows_compared')} rows; "
            f"{gate.get('detail', '')} ({mark(gate) if gate else '-'}); class flips blue -> green: "
            f"{json.dumps(result.shadow.get('flips') or {})}\n"
        )
    stem.with_suffix(".md").write_text(
        f"# Rollout {result.started}: {result.outcome}\n\n{result.reason}; green ends at {result.final_weight}%.\n"
        f"{shadow}\n![weight, green error rate and gates](./{stem.name}.svg)\n\n"
        "| t (s) | step | green weight | verdict | green | blue | gates (figure / threshold: mark) | reason |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    return stem.with_suffix(".md")


def chart(checks: list[Check], width: int = 560, top: int = 160) -> str:
    """Green's weight (line) and error rate (red dots) at each check; below, one row per gate, one cell per check,
    coloured by its mark and labelled with its figure."""
    names = [n for n in GATES if any(g["name"] == n for c in checks for g in c.gates)]
    height = top + 16 * len(names) + (10 if names else 0)
    if not checks:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top}"></svg>\n'
    end = max(c.at for c in checks) or 1.0
    left, plot = 70, width - 80

    def xy(at: float, share: float) -> tuple[float, float]:
        return left + plot * at / end, top - 20 - (top - 30) * share

    starts = [0.0, *(c.at for c in checks[:-1])]  # each window runs from the previous check to its own
    weight = " ".join(
        f"{x0:.1f},{y0:.1f} {x1:.1f},{y1:.1f}"
        for start, c in zip(starts, checks)
        for (x0, y0), (x1, y1) in [(xy(start, c.weight / 100), xy(c.at, c.weight / 100))]
    )
    dots = "".join(
        '<circle cx="{:.1f}" cy="{:.1f}" r="3" fill="#c0392b"/>'.format(*xy(c.at, min(1.0, c.green["error_rate"] or 0)))
        for c in checks
        if c.green
    )
    grid = []
    for row, name in enumerate(names):
        y = top + row * 16
        grid.append(f'<text x="4" y="{y + 11}">{escape(SHORT.get(name, name))}</text>')
        for start, c in zip(starts, checks):
            gate = next((g for g in c.gates if g["name"] == name), None)
            if gate is None:
                continue
            key = "dry-run" if gate["dry_run"] and gate["status"] == "fail" else gate["status"]
            x0, x1 = xy(start, 0)[0], xy(c.at, 0)[0]
            title = escape(f"step {c.step} ({c.weight}%): {gate['detail']} [{mark(gate)}]")
            grid.append(
                f'<rect x="{x0 + 1:.1f}" y="{y}" width="{max(2.0, x1 - x0 - 2):.1f}" height="14" '
                f'fill="{COLOURS[key]}"><title>{title}</title></rect>'
            )
            if x1 - x0 > 34:
                grid.append(f'<text x="{x0 + 3:.1f}" y="{y + 11}" fill="white">{escape(figure(gate["figure"]))}</text>')
    legend = (
        "".join(
            f'<rect x="{left + 95 * i}" y="{height - 9}" width="8" height="8" fill="{colour}"/>'
            f'<text x="{left + 95 * i + 11}" y="{height - 1}">{"fail (dry-run)" if key == "dry-run" else key}</text>'
            for i, (key, colour) in enumerate(COLOURS.items())
        )
        if names
        else ""
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + (12 if names else 0)}" '
        f'font-family="sans-serif" font-size="10"><rect width="100%" height="100%" fill="white"/>'
        f'<line x1="{left}" y1="{top - 20}" x2="{width - 10}" y2="{top - 20}" stroke="#888"/>'
        f'<line x1="{left}" y1="10" x2="{left}" y2="{top - 20}" stroke="#888"/>'
        f'<text x="{left - 30}" y="14">100%</text><text x="{left - 20}" y="{top - 20}">0%</text>'
        f'<text x="{width - 60}" y="{top - 6}">{end:.0f} s</text>'
        f'<polyline points="{weight}" fill="none" stroke="#27ae60" stroke-width="2"/>{dots}'
        f'<text x="{left + 10}" y="14" fill="#27ae60">green weight</text><text x="{left + 90}" y="14" '
        f'fill="#c0392b">green 5xx rate</text>{"".join(grid)}{legend}</svg>\n'
    )
