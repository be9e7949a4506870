"""Labels that arrive later, on real stacks (real nginx, real `bentoml serve`): joined to the answers each version
gave, accuracy per version exactly as computed offline, the ledger kept across a restart, bad files refused by the
command in one line each, and the accuracy gate deciding a rollout on its own."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import bentoml
import httpx
import joblib
import pandas as pd
import pytest
from typer.testing import CliRunner

from canary_kit.cli.app import app
from canary_kit.observe.ledger import LEDGER
from canary_kit.stacks.targets import LocalTarget
from canary_kit.steer.control import split_of
from conftest import NEXT, ROOT, WEAK, canary_process, data_rows, running_stack
from load import Load, tally
from test_ledger import MALFORMED

pytestmark = pytest.mark.integration
SPECIES = pd.read_csv(ROOT / "data" / "data.csv")["target"].tolist()
NOT_THE_MODEL = [
    "max_error_rate",
    "max_p99_ms",
    "max_p99_ratio",
    "srm_p_value",
    "max_class_divergence",
    "max_confidence_drop",
]


def canary(settings, *args):
    return CliRunner().invoke(app, [*args, "--state-dir", str(settings.state_dir)])


def label_file(path, answers: list[tuple[str, list[int]]]) -> None:
    """JSON lines: the true species of each row of each answered request."""
    with open(path, "w") as f:
        for rid, indices in answers:
            for row, index in enumerate(indices):
                f.write(json.dumps({"request_id": rid, "row": row, "label": SPECIES[index]}) + "\n")


def offline(answers: list[tuple[str, str, list[int]]], rows: list[dict]) -> dict[str, tuple[int, int]]:
    """version -> (rows, correct): each version's own pipeline on the rows it answered."""
    frame = pd.DataFrame(rows)
    out = {}
    for version in {v for _, v, _ in answers}:
        indices = [i for _, v, idx in answers if v == version for i in idx]
        model = joblib.load(bentoml.models.get(f"penguin_classifier:{version}").path_of("model.joblib"))
        predicted = model.predict(frame.iloc[indices])
        out[version] = (len(indices), int(sum(p == SPECIES[i] for p, i in zip(predicted, indices))))
    return out


def test_accuracy_per_version_is_exactly_the_offline_accuracy_and_survives_a_restart(trained, tmp_path):
    rows = data_rows()
    answers: list[tuple[str, str, list[int]]] = []
    with running_stack(tmp_path, green_weight=50) as stack:
        settings = stack.settings
        with httpx.Client(timeout=10) as client:
            requests = [[i] for i in range(len(rows))] + [
                list(range(s, min(s + 10, len(rows)))) for s in range(0, len(rows), 10)
            ]
            for indices in requests:  # one row per request, then again in batches of 10
                r = client.post(f"{settings.url}/predict", json={"instances": [rows[i] for i in indices]})
                assert r.status_code == 200, r.text
                answers.append((r.headers["x-request-id"], r.headers["x-model-version"], indices))
        time.sleep(2)  # the truth arrives later (whenever: the ledger reads nginx's log when the labels come)
        label_file(tmp_path / "labels.jsonl", [(rid, idx) for rid, _, idx in answers])
        sent = canary(settings, "labels", str(tmp_path / "labels.jsonl"))
        report = json.loads(canary(settings, "quality", "--json").output)
        shown = canary(settings, "quality").output
        status = canary(settings, "status").output
    expected = offline(answers, rows)
    found = {v["version"]: (v["labelled"], v["correct"]) for v in report["versions"]}
    print(f"\n{sent.output}\n{shown}\n{status}\noffline: {expected}")
    assert sent.exit_code == 0 and f"joined {2 * len(rows)} labels" in sent.output, sent.output
    assert found == expected, (found, expected)
    assert {v for _, v, _ in answers} == {"v1.0.0", "v1.1.0"}
    assert "labelled rows, accuracy" in status and "green - blue" in shown
    with running_stack(tmp_path, green_weight=50) as again:  # a restart of the stack on the same state folder
        kept = json.loads(canary(again.settings, "quality", "--json").output)
    assert {v["version"]: (v["labelled"], v["correct"]) for v in kept["versions"]} == expected
    assert kept["labels"] == report["labels"] == 2 * len(rows)


BAD_FILES = {
    "a class the model does not have": (b"request_id,label\nREQ,Emperor\n", "line 2: label 'Emperor' is not one of"),
    "not UTF-8": (b"request_id,label\nREQ,Ad\xe9lie\n", "line 2: not UTF-8"),
    "a row beyond the request": (b'{"request_id": "REQ", "row": 1, "label": "Adelie"}\n', "line 1: row 1 is beyond"),
    "a 10 MB line": (b"request_id,label\nREQ,Adelie\n" + b"x" * 10_000_000 + b"\n", "line 3: line longer than"),
    "an empty file": (b"", "line 0: the file holds no labels"),
    "15 malformed lines (#27)": (
        b"".join(json.dumps(fields).encode() + b"\n" for fields in MALFORMED),
        "line 15: label holds a control character",
    ),
}


def test_bad_label_files_are_refused_by_the_command_and_leave_the_ledger_byte_identical(stack, tmp_path):
    settings = stack.settings
    r = httpx.post(f"{settings.url}/predict", json={"instances": data_rows()[:1]}, timeout=10)
    rid = r.headers["x-request-id"]
    label_file(tmp_path / "good.jsonl", [(rid, [0])])
    assert canary_process(settings.state_dir, "labels", str(tmp_path / "good.jsonl")).returncode == 0
    for kind, (data, message) in BAD_FILES.items():
        path = tmp_path / "bad.txt"
        path.write_bytes(data.replace(b"REQ", rid.encode()))
        before = b"".join(p.read_bytes() for p in sorted(settings.state_dir.glob(LEDGER + "*")))
        refused = canary_process(settings.state_dir, "labels", str(path))
        after = b"".join(p.read_bytes() for p in sorted(settings.state_dir.glob(LEDGER + "*")))
        print(f"{kind}: exit {refused.returncode}: {refused.stderr.strip()[:200]}")
        assert refused.returncode == 1 and message in refused.stderr, (kind, refused.stderr[:500])
        assert refused.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in refused.stderr
        assert not any(c in refused.stderr for c in "\x1b\r\x00\u202e"), kind  # printed escaped, never raw
        assert after == before, kind


class Labeller:
    """Sends the true species of what the load's clients got back, every `every` seconds, as `canary labels`."""

    def __init__(self, settings, load: Load, folder, every: float = 2.0) -> None:
        self.settings, self.load, self.folder, self.every = settings, load, folder, every
        self.sent: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        for turn in range(300):  # bounded: 300 rounds at most
            if self.stop.wait(self.every):
                return
            fresh = [
                (a.request_id, [a.row])
                for a in list(self.load.answers)
                if a.status == 200 and a.request_id and a.request_id not in self.sent
            ]
            if not fresh:
                continue
            path = self.folder / f"labels-{turn}.jsonl"
            label_file(path, fresh)
            if canary_process(self.settings.state_dir, "labels", str(path)).returncode == 0:
                self.sent.update(rid for rid, _ in fresh)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=60)


@pytest.mark.parametrize("green", [WEAK, NEXT])
def test_the_accuracy_gate_alone_rolls_the_weak_version_back_and_lets_the_next_one_through(
    more_versions, tmp_path, green
):
    with running_stack(tmp_path, green_version=green, green_weight=10) as stack:
        settings = stack.settings
        with Load(settings.url, workers=8, max_requests=200_000, max_seconds=300, rows=data_rows()) as load:
            load.wait_for(0, 50)
            with Labeller(settings, load, tmp_path):
                args = [  # fixed mode: its accuracy gate's 95% interval (tests/test_driver.py: the sequential one)
                    "--mode",
                    "fixed",
                    "--hold",
                    "4",
                    "--max-accuracy-drop",
                    "0.05",
                    "--min-labels",
                    "100",
                    "--label-wait",
                    "90",
                    *[a for g in NOT_THE_MODEL for a in ("--dry-run", g)],
                ]
                result = canary(settings, "rollout", *args)
        report = json.loads(sorted((settings.state_dir / "rollouts").glob("rollout-*.json"))[-1].read_text())
        weight = split_of(LocalTarget(settings.state_dir))[0]
    accuracy = [
        (c["weight"], g["status"], g["detail"])
        for c in report["checks"]
        for g in c["gates"]
        if g["name"] == "max_accuracy_drop"
    ]
    print(f"\n{green}:\n{result.output}\naccuracy gate: {accuracy}\nclients: {dict(tally(load.answers))}")
    if green == WEAK:
        assert result.exit_code == 1 and "rolled back" in result.output, result.output
        assert "green worse by more than 5.0%" in result.output.strip().splitlines()[-1]
        assert weight == 0
    else:
        assert result.exit_code == 0 and "promoted" in result.output, result.output
        assert any(status == "pass" for _, status, _ in accuracy) and weight == 100
    assert not load.failed(), Counter(tally(load.answers))


def test_without_labels_a_step_holds_then_pauses_saying_why(more_versions, tmp_path):
    with running_stack(tmp_path, green_version=NEXT, green_weight=10) as stack:
        settings = stack.settings
        with Load(settings.url, workers=4, max_requests=200_000, max_seconds=120, rows=data_rows()) as load:
            load.wait_for(0, 20)
            result = canary(
                settings,
                "rollout",
                "--mode",
                "fixed",
                "--hold",
                "3",
                "--min-requests",
                "5",
                "--min-rows",
                "20",
                "--max-accuracy-drop",
                "0.05",
                "--label-wait",
                "8",
                "--on-failure",
                "pause",
            )
        weight = split_of(LocalTarget(settings.state_dir))[0]
    print(f"\n{result.output}")
    assert result.exit_code == 2 and "paused" in result.output, result.output
    assert "HOLD (labels)" in result.output and "waiting for labels: 0 green / 0 blue" in result.output
    assert "no accuracy verdict after" in result.output.strip().splitlines()[-1]
    assert weight == 10
