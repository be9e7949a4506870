"""Pinned requests are counted apart from the split's traffic in every gate (#27): a client that pins 30% of its
requests to green, all of one class, moves none of a rollout's figures. Each window is judged twice, without and
with that client: green's share of the requests (the HTTP gates' sample) stays the weight's binomial share, and
the classes green predicted stay those blue predicted (two proportions, the same within noise)."""

from __future__ import annotations

import json
import math
import time
from contextlib import ExitStack

import pandas as pd
import pytest
from typer.testing import CliRunner

from canary_kit.cli.app import app
from conftest import ROOT, data_rows, running_stack
from load import Load, assert_split

pytestmark = pytest.mark.integration
WEIGHT = 20
GATES = [
    "max_error_rate",
    "max_p99_ms",
    "max_p99_ratio",
    "srm_p_value",
    "max_class_divergence",
    "max_confidence_drop",
]


def canary(settings, *args):
    return CliRunner().invoke(app, [*args, "--state-dir", str(settings.state_dir)])


def rows_of(species: str) -> list[dict]:
    frame = pd.read_csv(ROOT / "data" / "data.csv")
    frame = frame[frame["target"] == species].drop(columns="target")
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def judged_window(settings, pinner: bool) -> dict:
    """A rollout's held window (5 s) at WEIGHT% (fixed mode, every gate in dry run, so it only measures; its next
    step, 100%, is not looked at) under an honest client (the data's rows, 240 a second) and, with `pinner`, a client
    sending Gentoo rows 120 a second, 30% of them pinned to green. (The sequential mode judges the same figures.)"""
    url = settings.url
    assert canary(settings, "set-weight", str(WEIGHT), "-m", "test: a window").exit_code == 0
    loads = [Load(url, workers=4, rate=240, rows=data_rows(), max_requests=10**6, max_seconds=90)]
    if pinner:
        gentoo = rows_of("Gentoo")
        loads.append(Load(url, workers=2, rate=84, rows=gentoo, max_requests=10**6, max_seconds=90))
        pinned = {"X-Canary": "always"}
        loads.append(Load(url, workers=2, rate=36, rows=gentoo, headers=pinned, max_requests=10**6, max_seconds=90))
    with ExitStack() as running:
        for load in loads:
            running.enter_context(load)
        time.sleep(1)
        dry = [a for gate in GATES for a in ("--dry-run", gate)]
        result = canary(settings, "rollout", "--mode", "fixed", "--steps", f"{WEIGHT},100", "--hold", "5", *dry)
    assert result.exit_code == 0, result.output
    assert not [a for load in loads for a in load.failed()], "a request failed"
    report = json.loads(sorted((settings.state_dir / "rollouts").glob("rollout-*.json"))[-1].read_text())
    check = next(c for c in report["checks"] if c["weight"] == WEIGHT)
    check["sent"] = [len(load.answers) for load in loads]
    return check


def share(rows: dict, name: str) -> tuple[int, int]:
    return rows.get(name, 0), sum(rows.values())


def two_proportions_z(a: tuple[int, int], b: tuple[int, int]) -> float:
    (x1, n1), (x2, n2) = a, b
    pooled = (x1 + x2) / (n1 + n2)
    return (x1 / n1 - x2 / n2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))


def test_a_client_pinning_30_percent_of_its_traffic_to_green_moves_no_gate_figure(trained, tmp_path):
    with running_stack(tmp_path, pins=True, green_weight=WEIGHT) as stack:
        settings = stack.settings
        windows = {name: judged_window(settings, pinner) for name, pinner in (("alone", False), ("pinner", True))}
    for name, check in windows.items():
        green, blue = check["green"], check["blue"]
        gentoo = {color: share(check[color]["class_rows"], "Gentoo") for color in ("green", "blue")}
        z = two_proportions_z(gentoo["green"], gentoo["blue"])
        divergence = next(g["figure"] for g in check["gates"] if g["name"] == "max_class_divergence")
        print(
            f"\n{name}: sent {check['sent']}; requests judged green {green['requests']} blue {blue['requests']} "
            f"(split {check['split']}), errors {green['errors']}/{blue['errors']}, p99 {green['p99_ms']}/"
            f"{blue['p99_ms']} ms; Gentoo rows green {gentoo['green']} blue {gentoo['blue']} (z {z:.2f}); "
            f"class divergence {divergence}"
        )
        assert_split(green["requests"], green["requests"] + blue["requests"], WEIGHT)
        assert_split(check["split"]["green"], check["split"]["green"] + check["split"]["blue"], WEIGHT)
        assert abs(z) < 4.5, f"{name}: green's Gentoo share is not blue's (z {z:.2f})"
        assert green["errors"] == 0 and blue["errors"] == 0
    alone, pinned = windows["alone"], windows["pinner"]
    shares = [w["green"]["requests"] / (w["green"]["requests"] + w["blue"]["requests"]) for w in (alone, pinned)]
    n = [w["green"]["requests"] + w["blue"]["requests"] for w in (alone, pinned)]
    z = two_proportions_z((alone["green"]["requests"], n[0]), (pinned["green"]["requests"], n[1]))
    print(f"green's share of the judged requests: alone {shares[0]:.3f}, with the pinner {shares[1]:.3f} (z {z:.2f})")
    assert abs(z) < 4.5
