"""The dashboard's charts, drawn on the server as SVG (no script, no CDN): both versions over the last minutes on
one shared time axis, with every change (`canary history`) and every rollout check drawn across all of them. The
running rollout's gate grid is the rollout report's own chart (report.chart)."""

from __future__ import annotations

import math
from html import escape

from canary_kit.rollout.driver import Check
from canary_kit.rollout.report import MARK_COLORS, evidence
from canary_kit.rollout.report import chart as gate_chart

COLOR = {"blue": "#2471a3", "green": "#1e8449"}
OUTCOME = {
    "pass": MARK_COLORS["pass"],
    "fail": MARK_COLORS["fail"],
    "inconclusive": MARK_COLORS["inconclusive"],
    "blue-down": MARK_COLORS["dry-run"],
}  # a check's own window, as the report colors it
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 620, 118, 52, 10, 18, 18


def _nice(top: float) -> float:
    """A round upper bound for an axis (1, 2 or 5 times a power of ten)."""
    if top <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(top))
    return next(m * power for m in (1, 2, 5, 10) if top <= m * power)


def _label(value: float) -> str:
    return f"{value:g}" if value < 1000 else f"{value / 1000:g}k"


def lines_chart(
    title: str,
    lines: list[tuple[str, str, bool, list[tuple[float, float | None]]]],
    t0: float,
    t1: float,
    y_max: float | None = None,
    unit: str = "",
    events=(),
    marks=(),
) -> str:
    """One panel: `lines` are (label, color, dashed, [(time, value or None)]); None breaks a line. `events` are
    (time, label) drawn as dashed verticals; `marks` (time, color, title) as dots on the top edge."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    values = [v for _, _, _, points in lines for _, v in points if v is not None]
    top = y_max if y_max is not None else _nice(max(values, default=0) * 1.1)
    span = max(t1 - t0, 1.0)

    def x(t: float) -> float:
        return LEFT + plot_w * (t - t0) / span

    def y(v: float) -> float:
        return TOP + plot_h * (1 - min(v, top) / top)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
        f'font-family="sans-serif" font-size="10" role="img" aria-label="{escape(title)}">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="11" font-weight="bold">{escape(title)}</text>',
    ]
    for frac in (0, 0.5, 1):  # horizontal grid and y labels
        yy = TOP + plot_h * (1 - frac)
        out.append(f'<line x1="{LEFT}" y1="{yy:.1f}" x2="{WIDTH - RIGHT}" y2="{yy:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 4}" y="{yy + 3:.1f}" text-anchor="end">{_label(top * frac)}{unit}</text>')
    step = 60 if span <= 360 else 180 if span <= 1200 else 600
    tick = t1
    while tick >= t0:  # time ticks, counted back from now
        ago = round(t1 - tick)
        out.append(
            f'<line x1="{x(tick):.1f}" y1="{TOP + plot_h}" x2="{x(tick):.1f}" y2="{TOP + plot_h + 3}" stroke="#888"/>'
        )
        text = "now" if ago == 0 else f"-{ago // 60}m" if ago % 60 == 0 else f"-{ago}s"
        out.append(f'<text x="{x(tick):.1f}" y="{HEIGHT - 4}" text-anchor="middle">{text}</text>')
        tick -= step
    for when, label in events:
        if t0 <= when <= t1:
            out.append(
                f'<line x1="{x(when):.1f}" y1="{TOP}" x2="{x(when):.1f}" y2="{TOP + plot_h}" stroke="#7d3c98" '
                f'stroke-dasharray="3,3"><title>{escape(label)}</title></line>'
            )
    for when, color, text in marks:
        if t0 <= when <= t1:
            out.append(
                f'<circle cx="{x(when):.1f}" cy="{TOP}" r="3.5" fill="{color}"><title>{escape(text)}</title></circle>'
            )
    legend_x = WIDTH - RIGHT
    for label, color, dashed, points in reversed(lines):
        segments: list[list] = []
        segment: list = []
        for t, v in points:
            if v is None or t < t0:
                if segment:
                    segments.append(segment)
                segment = []
            else:
                segment.append(f"{x(t):.1f},{y(v):.1f}")
        if segment:
            segments.append(segment)
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        for seg in segments:
            if len(seg) == 1:
                seg = seg * 2
            out.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>')
        legend_x -= 7 * len(label) + 18
        out.append(
            f'<line x1="{legend_x}" y1="8" x2="{legend_x + 12}" y2="8" stroke="{color}" stroke-width="2"{dash}/>'
            f'<text x="{legend_x + 15}" y="11">{escape(label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def render(samples: list[dict], history: list[dict], rollout: dict | None, now: float, span: float = 900.0) -> dict:
    """Every panel of the page, from the poller's per-second samples, the change log and the rollout's progress."""
    t0 = max(now - span, min((s["t"] for s in samples), default=now) - 1)
    t0 = min(t0, now - 60)
    events = [
        (
            e["unix"],
            f"{e.get('time', '')[11:19]} {e.get('event')}: green {e.get('old_green_weight')}% -> "
            f"{e.get('new_green_weight')}% {e.get('reason', '')}",
        )
        for e in history
        if e.get("unix")
    ]
    checks = (rollout or {}).get("checks") or []
    regression = any(s.get("task") == "regression" for s in samples[-1:])
    marks = [
        (
            c["wall"],
            OUTCOME.get(c.get("outcome"), "#888"),
            f"step {c['step']} ({c['weight']}%): {c['outcome']}, {c['verdict']} - {c['reason']}",
        )
        for c in checks
        if c.get("wall")
    ]

    def pick(color: str, key: str, scale: float = 1.0):
        return [(s["t"], None if (s.get(color) or {}).get(key) is None else s[color][key] * scale) for s in samples]

    both = lambda key, scale=1.0, dashed=False, suffix="": [  # noqa: E731
        (f"{c}{suffix}", COLOR[c], dashed, pick(c, key, scale)) for c in ("blue", "green")
    ]
    charts = {
        "weight": lines_chart(
            "green's weight",
            [("green %", COLOR["green"], False, [(s["t"], s.get("weight")) for s in samples])],
            t0,
            now,
            100,
            "%",
            events,
            marks,
        ),
        "rps": lines_chart("requests/s (/predict)", both("rps"), t0, now, None, "", events),
        "errors": lines_chart("5xx share", both("error_rate", 100), t0, now, None, "%", events),
        "latency": lines_chart(
            "latency p50 / p99 (dashed)",
            both("p50_ms", suffix=" p50") + both("p99_ms", dashed=True, suffix=" p99"),
            t0,
            now,
            None,
            "ms",
            events,
        ),
        "confidence": lines_chart(
            "mean predicted value since the last change" if regression else "mean confidence (top-class probability)",
            both("confidence"),
            t0,
            now,
            None if regression else 1.0,
            "",
            events,
        ),
        "divergence": lines_chart(
            "KS distance of predicted values since the last change"
            if regression
            else "class divergence since the last change (JS distance)",
            [("green vs blue", "#7d3c98", False, [(s["t"], s.get("divergence")) for s in samples])],
            t0,
            now,
            None,
            "",
            events,
        ),
    }
    kept = [Check.from_json(c) for c in checks]
    progress = rollout or {}
    look = progress.get("look")
    if look and progress.get("state") == "running" and look.get("gates"):  # the evidence up to this second
        started = progress.get("started_wall") or 0
        at = round(look["wall"] - started, 1) if started else (kept[-1].at + 1 if kept else 0.0)
        latest = Check(
            progress.get("step") or 0,
            progress.get("weight") or 0,
            look["verdict"],
            look["reason"],
            at,
            gates=look["gates"],
            seconds=look["seconds"],
            outcome="gathering",
        )
        kept = [*kept, latest]
    charts["gates"] = gate_chart(kept) if kept else ""
    charts["evidence"] = evidence(kept) if kept else ""
    return charts
