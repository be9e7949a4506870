"""What a person reads: the status table and the history of changes, as lines of text."""

from __future__ import annotations

import json
import re
from pathlib import Path

from canary_kit.policy.evidence import Figures

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def clean(value) -> str:
    """What a user wrote (a reason, an id, a label), printable on a terminal: control characters (escape
    sequences, carriage returns, bidirectional overrides) shown as escapes, never sent raw."""
    text = "" if value is None else str(value)
    return CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def fmt(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def figures_line(figures: Figures | None) -> str:
    """One version's window figures in one line: requests, 5xx share, p99."""
    if not figures:
        return "-"
    rate = "-" if figures.error_rate is None else f"{figures.error_rate:.1%}"
    p99 = "-" if figures.p99_ms is None else f"{figures.p99_ms:.0f}ms"
    return f"{figures.requests} req, {rate} 5xx, p99 {p99}"


def number(value: float | None) -> str:
    """A gate's figure in few characters."""
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def gate_line(gate: dict) -> str:
    """One gate's evidence in one line (a GateResult as a dict): its figure, and in sequential mode the interval it
    lies in and the lines it is judged against; in fixed mode its threshold."""
    name, figure = gate["name"], number(gate.get("figure"))
    if gate.get("low") is None or gate.get("high") is None:
        threshold = "-" if gate.get("threshold") is None else f"{gate['threshold']:g}"
        return f"{name} {figure} / {threshold}"
    interval = f"[{number(gate['low'])}, {number(gate['high'])}]"
    if gate.get("tolerance") is None:
        return f"{name} {figure} {interval} / {number(gate.get('threshold'))}"
    return f"{name} {figure} {interval} / fails > {number(gate['tolerance'])}, passes < {number(gate['threshold'])}"


def rollout_lines(progress: dict | None) -> list[str]:
    """The running (or last) rollout, for `canary status`: where it is, each gate's evidence at the last look, and
    why each step ended (live.read's current.json)."""
    if not progress:
        return []
    steps = progress.get("steps") or []
    state = progress.get("state", "-")
    if state == "running":
        look = progress.get("look") or {}
        held = f", step held {look['seconds']:.0f}s" if look.get("seconds") is not None else ""
        where = f"step {progress.get('step', '-')}/{len(steps)} at {progress.get('weight', '-')}%{held}"
        lines = [f"rollout ({progress.get('mode', 'fixed')}): running, {where}"]
        if look.get("reason"):
            lines.append(f"  last look: {clean(look['reason'])}")
        gates = look.get("gates") or ((progress.get("checks") or [{}])[-1].get("gates") or [])
    else:
        lines = [
            f"rollout ({progress.get('mode', 'fixed')}): {state}: {clean(progress.get('reason', ''))}; green at "
            f"{progress.get('final_weight')}%"
        ]
        gates = []
    for gate in gates:
        mark = f"{gate['status']} (dry-run)" if gate.get("dry_run") and gate["status"] != "skipped" else gate["status"]
        lines.append(f"  {mark:<14}{gate_line(gate)}")
    for check in progress.get("checks") or []:
        if check.get("verdict") != "hold":
            lines.append(
                f"  step {check['step']} ({check['weight']}%) {check['verdict']} after "
                f"{check.get('seconds', 0):.0f}s: {clean(check['reason'])}"
            )
    return lines


def change_line(before, after) -> str:
    """What a weight change did, in one line (the CLI prints it, the dashboard shows it)."""
    old, new = before.green_weight, after.green_weight
    if old == new:
        return f"green already gets {new}%: nothing changed"
    return f"green {old}% -> {new}%  (blue {100 - new}%)"


def status_lines(report: dict) -> tuple[list[str], list[str]]:
    """The status table, and the warnings to show beside it."""
    since = f"since {report['since']}" if report["since"] else "since start"
    weight = report["green_weight"]
    shadow = "   shadow: green gets a copy of each /predict" if report["shadow"] else ""
    lines = [f"split: blue {100 - weight}% / green {weight}%{shadow}   figures {since}"]
    taken = report.get("takeover")
    if taken:  # first, where nobody can miss it: the untested candidate answers production traffic
        lines.insert(
            0,
            f"BLUE IS DOWN: green {taken['green_version']} (the candidate) answers blue's "
            f"{taken['blue_share']}% share too, so 100% of requests",
        )
    lines.append(
        f"{'':6}{'version':<9}{'weight':>7}  {'health':<7}"
        f"{'requests':>9}{'5xx':>6}{'err%':>7}{'p50 ms':>8}{'p99 ms':>8}"
    )
    for color, b in report["backends"].items():
        f = b["since_change"] or {}
        rate = None if f.get("error_rate") is None else 100 * f["error_rate"]
        free = color == "green" and report.get("green_free")
        health = "free" if free else "up" if b["healthy"] else "DOWN"
        lines.append(
            f"{color:<6}{fmt(b['version']) if not free else '-':<9}{b['weight']:>6}%  {health:<7}"
            f"{fmt(f.get('requests')):>9}{fmt(f.get('errors')):>6}{fmt(rate, '.2f'):>7}"
            f"{fmt(f.get('p50_ms'), '.1f'):>8}{fmt(f.get('p99_ms'), '.1f'):>8}"
        )
    pinned = report.get("pinned")
    if pinned and (pinned.get("green") or pinned.get("blue")):
        lines.append(
            f"pinned: {pinned.get('green', 0)} requests asked for green, {pinned.get('blue', 0)} for blue "
            "(counted apart from the split: no gate judges them)"
        )
    lines.extend(prediction_lines(report))
    lines += process_lines(report.get("processes") or {})
    warnings = rollout_warnings(report.get("rollout"), (report["state_file"] or {}).get("serial"))
    applied, in_file = report["nginx"], report["state_file"]
    if applied is None:
        warnings.append("warning: nginx did not answer; the split shown is the state file's")
    elif "problem" in applied:
        warnings.append(f"warning: nginx sends everything to blue: {applied['problem']}")
    elif in_file and applied.get("serial") != in_file["serial"]:
        warnings.append(f"warning: nginx applies state {applied.get('serial')}, the file holds {in_file['serial']}")
    return lines, warnings


def rollout_warnings(rollout: dict | None, serial: int | None) -> list[str]:
    """The last rollout, shouted while the state it left stands, when it ended half-way: paused, interrupted (by
    Ctrl-C, or killed with nothing to put green back), or ended by an error or a kill."""
    if not rollout or rollout.get("state") not in ("paused", "interrupted", "rolled back"):
        return []
    left = rollout.get("serial")
    if left is not None and serial is not None and left != serial:
        return []  # changed since: the rollout's end is history (`canary history`)
    reason = clean(rollout.get("reason"))
    if rollout["state"] == "rolled back":
        if not rollout.get("error"):
            return []  # a verdict of its gates: the rollout did its job
        return [f"ROLLOUT FAILED (started {rollout.get('started')}): {reason}"]
    weight = rollout.get("final_weight") if rollout["state"] == "paused" else rollout.get("weight")
    return [
        f"ROLLOUT {rollout['state'].upper()} (started {rollout.get('started')}) with green at {fmt(weight)}%: "
        f"{reason}; `canary rollout` goes on from here, `canary rollback` sends everything to blue"
    ]


def prediction_lines(report: dict) -> list[str]:
    """What each version predicted since the last change: a classifier's class shares and mean confidence and their
    divergence, a regressor's mean and spread and their KS distance (nothing when no prediction was seen)."""
    lines = []
    for color, b in report["backends"].items():
        f = b["since_change"] or {}
        if not f.get("rows"):
            continue
        if report.get("task") == "regression":
            lines.append(
                f"{color:<6}predicted {f['rows']} rows: mean {fmt(f.get('value_mean'), '.4g')}, "
                f"sd {fmt(f.get('value_sd'), '.4g')}"
            )
            continue
        shares = "  ".join(f"{name} {100 * n / f['rows']:.0f}%" for name, n in (f.get("class_rows") or {}).items())
        lines.append(
            f"{color:<6}predicted {f['rows']} rows: {shares}   mean confidence {fmt(f.get('confidence_mean'), '.3f')}"
        )
    if lines and report.get("class_divergence") is not None:
        lines.append(f"class divergence (JS distance, green vs blue): {report['class_divergence']:.3f}")
    if lines and report.get("ks_distance") is not None:
        lines.append(f"predicted values, KS distance green vs blue: {report['ks_distance']:.3f}")
    for color, q in (report.get("labelled") or {}).items():
        figure = f"MAE {q['mae']:.4g}" if "mae" in q else f"accuracy {100 * q['accuracy']:.1f}%"
        lines.append(
            f"{color:<6}{q['version']}: {q['labelled']} labelled rows, {figure} "
            "(all its answers; `canary quality` for more)"
        )
    return lines


def regression_quality_lines(report: dict, since: str) -> list[str]:
    """`canary quality` of a regressor: MAE and RMSE per version with their 95% intervals, and green's MAE over
    blue's."""
    lines = [
        f"labelled answers ({since}; the ledger holds {report['answers']:,} answered rows, "
        f"{report['labels']:,} labels)",
        f"{'version':<18}{'role':<7}{'labelled':>9}{'MAE':>11}  {'95% interval':<22}{'RMSE':>11}  95% interval",
    ]

    def span(bounds) -> str:
        return "-" if bounds is None else f"[{bounds[0]:.4g}, {bounds[1]:.4g}]"

    for row in report["versions"]:
        lines.append(
            f"{row['version']:<18}{row['role']:<7}{row['labelled']:>9}{fmt(row['mae'], '.4g'):>11}  "
            f"{span(row['mae_interval']):<22}{fmt(row['rmse'], '.4g'):>11}  {span(row['rmse_interval'])}"
        )
    found = report.get("green_over_blue_mae")
    if found is not None:
        lines.append(
            f"green's MAE over blue's: {100 * found[0]:+.1f}%, 95% interval [{100 * found[1]:+.1f}%, "
            f"{100 * found[2]:+.1f}%]"
        )
    return lines


def quality_lines(report: dict) -> list[str]:
    """`canary quality` as a table, the difference, and each version's confusion matrix (a classifier's), or the
    errors (a regressor's)."""
    since = f"since {report['since']} UTC" if report["since"] else "all answers kept"
    if report.get("task") == "regression":
        return regression_quality_lines(report, since)
    lines = [
        f"labelled answers ({since}; the ledger holds {report['answers']:,} answered rows, "
        f"{report['labels']:,} labels)",
        f"{'version':<9}{'role':<7}{'labelled':>9}{'correct':>9}{'accuracy':>10}  95% interval",
    ]
    for row in report["versions"]:
        interval = (
            "-" if row["interval"] is None else f"[{100 * row['interval'][0]:.1f}%, {100 * row['interval'][1]:.1f}%]"
        )
        accuracy = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
        lines.append(
            f"{row['version']:<9}{row['role']:<7}{row['labelled']:>9}{row['correct']:>9}{accuracy:>10}  {interval}"
        )
    diff = report["green_minus_blue"]
    if diff is not None:
        lines.append(
            f"green - blue: {100 * diff[0]:+.1f} points, 95% interval [{100 * diff[1]:+.1f}, {100 * diff[2]:+.1f}]"
        )
    for row in report["versions"]:
        if not row["confusion"]:
            continue
        classes = sorted(set(row["confusion"]) | {p for c in row["confusion"].values() for p in c})
        lines.append(f"{row['version']} confusion (rows: label, columns: predicted)")
        lines.append(" " * 12 + "".join(f"{c[:10]:>11}" for c in classes))
        for label in classes:
            cells = row["confusion"].get(label, {})
            lines.append(f"{label[:11]:<12}" + "".join(f"{cells.get(c, 0):>11}" for c in classes))
    return lines


def process_lines(processes: dict) -> list[str]:
    """One line per supervised process: pid, state, restarts and why it last exited."""
    if not processes:
        return []
    lines = [f"{'process':<9}{'pid':>8}  {'restarts':>8}  {'state':<24} last exit"]
    for name, p in processes.items():
        lines.append(
            f"{name:<9}{fmt(p.get('pid')):>8}  {p.get('restarts', 0):>8}  {p.get('state', 'running'):<24} "
            f"{clean(p.get('last_exit')) or '-'}"
        )
    return lines


def read_history(log: Path, limit: int | None = None) -> list[dict]:
    """The change log's entries, oldest first (the last `limit` of them)."""
    if not log.is_file():
        return []
    entries = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut short by a crash: skip it
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries[-limit:] if limit else entries


def history_lines(entries: list[dict]) -> list[str]:
    """One line per change: when, what, which versions served, the split before and after, who and why."""
    lines = [f"{'time (UTC)':<20} {'event':<10} {'blue':<8} {'green':<8} {'green %':>9}  {'by':<10} reason"]
    for e in entries:
        split = f"{e.get('old_green_weight', '-'):>3} -> {e.get('new_green_weight', '-'):<3}"
        lines.append(
            f"{e.get('time', '')[:19].replace('T', ' '):<20} {e.get('event', 'set-weight'):<10} "
            f"{fmt(e.get('blue_version')):<8} {fmt(e.get('green_version')):<8} {split:>9}  "
            f"{clean(e.get('by', '')):<10} {clean(e.get('reason', ''))}"
        )
    return lines
