"""A rollout's report: rollout-<time>.json (everything), .md (why each step ended, and a table of every check kept:
each gate's figure, its interval and lines in sequential mode, and its mark), .svg (green's weight and error rate
over time, and a grid of every gate at every check: pass, fail, dry-run fail, inconclusive) and -evidence.svg
(sequential mode: each gate's interval at each check against its two lines, as the evidence built up)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from canary_kit.observe.views import figures_line, gate_line, number
from canary_kit.policy.registry import GATES
from canary_kit.rollout.driver import Check, Rollout

MARK_COLORS = {
    "pass": "#27ae60",
    "fail": "#c0392b",
    "inconclusive": "#95a5a6",
    "skipped": "#ecf0f1",
    "dry-run": "#e67e22",
}


def mark(gate: dict) -> str:
    if gate["status"] == "skipped":
        return "skipped"
    return f"{gate['status']} (dry-run)" if gate["dry_run"] else gate["status"]


def write_report(result: Rollout, folder: Path) -> Path:
    """rollout-<time>.json, .md, .svg and -evidence.svg in `folder`; returns the Markdown file."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"rollout-{result.started.replace(':', '').replace('+0000', 'Z')}"
    stem.with_suffix(".json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    stem.with_suffix(".svg").write_text(chart(result.checks))
    evidence_svg = evidence(result.checks)
    if evidence_svg:
        stem.with_name(stem.name + "-evidence.svg").write_text(evidence_svg)
    rows = []
    for c in result.checks:
        gates = "<br>".join(f"{gate_line(g)}: {mark(g)}" for g in c.gates)
        rows.append(
            f"| {c.at:.0f} | {c.step} | {c.weight}% | {c.seconds:.0f} | {c.verdict} | {figures_line(c.green)} | "
            f"{figures_line(c.blue)} | {gates or '-'} | {c.reason} |"
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
    family = ""
    if result.spec.get("mode") == "sequential" and result.family_alpha is not None:
        family = f" Sequential gates; family error rate at most {result.family_alpha:g}."
    ended = "\n".join(f"- {line}" for line in step_endings(result.checks)) or "- no step ended"
    pictures = f"![weight, green error rate and gates](./{stem.name}.svg)"
    if evidence_svg:
        pictures += f"\n\n![each gate's interval against its lines](./{stem.name}-evidence.svg)"
    stem.with_suffix(".md").write_text(
        f"# Rollout {result.started}: {result.outcome}\n\n{result.reason}; green ends at {result.final_weight}%."
        f"{family}\n{shadow}\nHow each step ended:\n\n{ended}\n\n{pictures}\n\n"
        "| t (s) | step | green weight | step held (s) | verdict | green | blue "
        "| gates (figure [interval] / lines: mark) | reason |\n|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    return stem.with_suffix(".md")


def step_endings(checks: list[Check]) -> list[str]:
    """Why each step ended: its verdict's check, one line each."""
    return [
        f"step {c.step} ({c.weight}%) {c.verdict} after {c.seconds:.0f}s: {c.reason}"
        for c in checks
        if c.verdict != "hold"
    ]


def evidence(checks: list[Check], width: int = 560, row: int = 46) -> str:
    """Sequential mode: one panel per gate, each kept check's interval (a bar; the figure a dot) against the gate's
    tolerance (red, dashed: fails above it) and threshold (green, dashed: passes below it), on a time axis; steps
    marked at the top. Empty when no check has an interval."""
    names = [n for n in GATES if any(g["name"] == n and g.get("low") is not None for c in checks for g in c.gates)]
    if not names or not checks:
        return ""
    end = max(c.at for c in checks) or 1.0
    left, plot = 84, width - 94
    height = 22 + row * len(names)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="10"><rect width="100%" height="100%" fill="white"/>'
    ]
    starts: dict[int, float] = {}
    for c in checks:
        starts.setdefault(c.step, c.at - c.seconds)
    for step_number, start in starts.items():
        x = left + plot * max(0.0, start) / end
        parts.append(f'<line x1="{x:.1f}" y1="12" x2="{x:.1f}" y2="{height}" stroke="#ddd"/>')
        parts.append(f'<text x="{x + 2:.1f}" y="10" fill="#888">step {step_number}</text>')
    for i, name in enumerate(names):
        top = 16 + i * row
        found = [(c, g) for c in checks for g in c.gates if g["name"] == name and g.get("low") is not None]
        lines = [v for g in (found[-1][1],) for v in (g.get("tolerance"), g.get("threshold")) if v is not None]
        values = [v for _, g in found for v in (g["low"], g["high"])] + lines
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        low, high = low - 0.05 * span, high + 0.05 * span

        def y(v: float, top: float = top, low: float = low, high: float = high) -> float:
            return top + (row - 10) * (1 - (v - low) / (high - low))

        parts.append(f'<text x="4" y="{top + row / 2:.0f}">{escape(GATES[name].label)}</text>')
        parts.append(f'<rect x="{left}" y="{top}" width="{plot}" height="{row - 10}" fill="none" stroke="#eee"/>')
        last = found[-1][1]
        for value, color, what in (
            (last.get("tolerance"), MARK_COLORS["fail"], "fails above"),
            (last.get("threshold"), MARK_COLORS["pass"], "passes below"),
        ):
            if value is None:
                continue
            parts.append(
                f'<line x1="{left}" y1="{y(value):.1f}" x2="{left + plot}" y2="{y(value):.1f}" stroke="{color}" '
                f'stroke-dasharray="4 3"><title>{what} {value:g}</title></line>'
            )
        for c, g in found:
            x = left + plot * c.at / end
            color = MARK_COLORS.get(g["status"], "#888")
            title = escape(f"step {c.step} ({c.weight}%), {c.seconds:.0f}s: {g['detail']} [{mark(g)}]")
            parts.append(
                f'<line x1="{x:.1f}" y1="{y(g["high"]):.1f}" x2="{x:.1f}" y2="{y(g["low"]):.1f}" stroke="{color}" '
                f'stroke-width="3"><title>{title}</title></line>'
            )
            if g.get("figure") is not None:
                parts.append(f'<circle cx="{x:.1f}" cy="{y(g["figure"]):.1f}" r="2" fill="#333"/>')
    parts.append(f'<text x="{width - 50}" y="{height - 2}">{end:.0f} s</text></svg>\n')
    return "".join(parts)


def chart(checks: list[Check], width: int = 560, top: int = 160) -> str:
    """Green's weight (line) and error rate (red dots) at each check; below, one row per gate, one cell per check,
    colored by its mark and labelled with its figure."""
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
        '<circle cx="{:.1f}" cy="{:.1f}" r="3" fill="#c0392b"/>'.format(*xy(c.at, min(1.0, c.green.error_rate or 0)))
        for c in checks
        if c.green
    )
    grid = []
    for row, name in enumerate(names):
        y = top + row * 16
        grid.append(f'<text x="4" y="{y + 11}">{escape(GATES[name].label)}</text>')
        for start, c in zip(starts, checks):
            gate = next((g for g in c.gates if g["name"] == name), None)
            if gate is None:
                continue
            key = "dry-run" if gate["dry_run"] and gate["status"] == "fail" else gate["status"]
            x0, x1 = xy(start, 0)[0], xy(c.at, 0)[0]
            title = escape(f"step {c.step} ({c.weight}%): {gate['detail']} [{mark(gate)}]")
            grid.append(
                f'<rect x="{x0 + 1:.1f}" y="{y}" width="{max(2.0, x1 - x0 - 2):.1f}" height="14" '
                f'fill="{MARK_COLORS[key]}"><title>{title}</title></rect>'
            )
            if x1 - x0 > 34:
                grid.append(f'<text x="{x0 + 3:.1f}" y="{y + 11}" fill="white">{escape(number(gate["figure"]))}</text>')
    legend = (
        "".join(
            f'<rect x="{left + 95 * i}" y="{height - 9}" width="8" height="8" fill="{color}"/>'
            f'<text x="{left + 95 * i + 11}" y="{height - 1}">{"fail (dry-run)" if key == "dry-run" else key}</text>'
            for i, (key, color) in enumerate(MARK_COLORS.items())
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
