"""The container path for real: the images, the unchanged docker-compose.yml, traffic through 127.0.0.1:8000.

Run by scripts/container-e2e (`make container-e2e`) once it has an engine, the base images and the three
penguin_classifier:vX images; it sets CONTAINER_E2E_READY=1 and runs `pytest -m container`. Without that
variable every test here is skipped; the plain `pytest` run deselects them (addopts `-m 'not container'`).

The tests run in file order as one release story on one stack (module fixture `stack`): the images, the stack's
shape, the split, 12 weight changes and a rollback, shadow, promote, labels, then the next release (deploy, promote,
finalize), all with `canary … --compose` under clients that never resend. Every request goes to loopback only.
Logs are in $CONTAINER_E2E_DIR/logs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from canary_kit.core.processes import port_in_use
from canary_kit.stacks.targets import compose_command
from conftest import BIN, ROOT, data_rows
from load import Load, assert_split, tally

pytestmark = [
    pytest.mark.container,
    pytest.mark.integration,  # real processes too: left out of `-m "not integration"` (make test-fast)
    pytest.mark.skipif(
        os.environ.get("CONTAINER_E2E_READY") != "1",
        reason="needs the engine and images that scripts/container-e2e provides (make container-e2e)",
    ),
]

MODEL = "penguin_classifier"
BLUE, GREEN, NEXT = "v1.0.0", "v1.1.0", "v1.2.0"
SERVICES = ("ml-blue", "ml-green", "nginx")
PORT = 8000  # fixed by docker-compose.yml
URL = f"http://127.0.0.1:{PORT}"
ADMIN_URL = "http://127.0.0.1:8001"  # the admin port, this host only: the operator's pins apply there
LABEL_KEY = "org.opencontainers.image.version"  # plus ai.bentoml.model_version; both carry the model version
WORK = Path(os.environ.get("CONTAINER_E2E_DIR", "/tmp/canary-e2e"))
STATE = WORK / "compose-state"  # the stack's routing state, apart from the project's nginx/state
LOGS = WORK / "logs"
COMPOSE = shlex.split(os.environ.get("CONTAINER_E2E_COMPOSE_CMD") or compose_command())
# The environment of every docker, compose and canary command (the suite's conftest drops CANARY_* names).
ENV = {
    "COMPOSE_PROJECT_NAME": "canary-e2e",
    "COMPOSE_FILE": str(ROOT / "docker-compose.yml"),
    **os.environ,
    "CANARY_COMPOSE_STATE": str(STATE),
    "CANARY_COMPOSE_CMD": shlex.join(COMPOSE),
}
CANARY = str(BIN / "canary")


def command(argv: list[str], timeout: float = 120, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run a command from the project folder with the stack's environment; a time-out gives exit code -1."""
    try:
        return subprocess.run(
            argv, cwd=ROOT, env={**ENV, **env}, input=stdin, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(argv, -1, str(exc.stdout or ""), f"timed out after {timeout}s")


def said(result: subprocess.CompletedProcess) -> str:
    return f"{shlex.join(map(str, result.args))} exited {result.returncode}\n{result.stdout}\n{result.stderr}".strip()


def compose(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return command([*COMPOSE, *args], timeout=timeout, **env)


def container_of(service: str) -> str:
    return (compose("ps", "-q", service, timeout=30).stdout.split() or [""])[0]


def inspect(ref: str, template: str) -> str:
    return command(["docker", "inspect", "-f", template, ref], timeout=30).stdout.strip()


def health() -> dict[str, str]:
    template = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
    return {svc: (inspect(cid, template) if (cid := container_of(svc)) else "missing") for svc in SERVICES}


def health_report() -> str:
    """The last health check of every service that is not healthy."""
    lines = []
    for svc in SERVICES:
        cid = container_of(svc)
        state = json.loads(inspect(cid, "{{json .State}}") or "{}") if cid else {}
        checks = state.get("Health") or {}
        if checks.get("Status") != "healthy":
            last = (checks.get("Log") or [{}])[-1]
            out = " ".join(str(last.get("Output", "")).split())[:240]
            status = checks.get("Status") or state.get("Status")
            lines.append(f"{svc}: {status}; last check exit {last.get('ExitCode')}: {out}")
    return "\n".join(lines)


def load(**kwargs) -> Load:
    """Load through the stack's nginx: the data's rows in turn; each answer's body must name the header's version."""
    return Load(URL, rows=ROWS, timeout=10, check_version_field=True, **kwargs)


ROWS = data_rows()


# ---------------------------------------------------------------------------------------------- the images
@pytest.mark.parametrize("version", [BLUE, GREEN, NEXT])
def test_image_is_labelled_and_runs_as_non_root(version):
    image = f"{MODEL}:{version}"
    assert inspect(image, f'{{{{index .Config.Labels "{LABEL_KEY}"}}}}') == version, f"{image}: label {LABEL_KEY}"
    assert inspect(image, '{{index .Config.Labels "ai.bentoml.model_version"}}') == version
    user = inspect(image, "{{.Config.User}}")
    uid = command(["docker", "run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u"], timeout=60)
    assert user not in ("", "root", "0"), f"{image}: USER {user!r}"
    assert uid.returncode == 0 and uid.stdout.strip().isdigit() and uid.stdout.strip() != "0", said(uid)


# ---------------------------------------------------------------------------------------------- the stack
@pytest.fixture(scope="module")
def stack(request):
    """docker-compose.yml up (blue v1.0.0, green v1.1.0, a fresh routing state), healthy; always torn down."""
    assert not port_in_use("127.0.0.1", PORT), (
        f"127.0.0.1:{PORT} is already taken (docker-compose.yml publishes nginx there)"
    )
    config = compose("config", "-q")
    assert config.returncode == 0, said(config)
    dotenv = ROOT / ".env"  # `canary deploy|finalize --compose` pins the versions there: the user's own file returns
    saved = dotenv.read_bytes() if dotenv.exists() else None
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)  # a new stack: its first split from the compose file
    LOGS.mkdir(parents=True, exist_ok=True)
    try:
        began = time.monotonic()
        up = compose("up", "-d", timeout=420, CANARY_BLUE_VERSION=BLUE, CANARY_GREEN_VERSION=GREEN)
        (LOGS / "compose-up.log").write_text(up.stdout + up.stderr)
        assert up.returncode == 0, f"{said(up)}\n{health_report()}"
        deadline, status = time.monotonic() + 180, {}
        while time.monotonic() < deadline:
            status = health()
            if set(status.values()) == {"healthy"}:
                break
            time.sleep(2)
        assert set(status.values()) == {"healthy"}, f"not healthy after 180s: {status}\n{health_report()}"
        print(f"\ncompose up to three healthy services in {time.monotonic() - began:.0f}s")
        yield
    finally:
        logs = compose("logs", "--no-color", timeout=60)
        (LOGS / "compose.log").write_text(logs.stdout + logs.stderr)
        if request.session.testsfailed:
            tail = [line[:300] for line in logs.stdout.splitlines() if not re.search(r'"status":200|status=200', line)]
            print("\nlast nginx/blue/green log lines (all in logs/compose.log):\n" + "\n".join(tail[-20:]))
        down = compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=180)
        (LOGS / "compose-down.log").write_text(down.stdout + down.stderr)
        for kind in ("network", "volume"):  # any of the project's that survived
            label = f"label=com.docker.compose.project={ENV['COMPOSE_PROJECT_NAME']}"
            ids = command(["docker", kind, "ls", "-q", "--filter", label], timeout=30).stdout.split()
            if ids:
                command(["docker", kind, "rm", *ids], timeout=60)
        if saved is None:
            dotenv.unlink(missing_ok=True)
        else:
            dotenv.write_bytes(saved)


def test_only_nginx_publishes_a_host_port(stack):
    template = "{{range $p, $b := .NetworkSettings.Ports}}{{range $b}}{{$p}}->{{.HostIp}}:{{.HostPort}} {{end}}{{end}}"
    published = {svc: inspect(container_of(svc), template) for svc in SERVICES}
    print(f"\npublished: {published}; compose port nginx {PORT}: {compose('port', 'nginx', str(PORT)).stdout.strip()}")
    assert re.search(rf"->[^ ]*:{PORT}( |$)", published["nginx"]), published
    assert published["ml-blue"] == published["ml-green"] == "", published


@pytest.mark.parametrize("service", ["ml-blue", "ml-green"])
def test_backend_runs_as_non_root_with_heads_with_bodies(stack, service):
    cid = container_of(service)
    uid = command(["docker", "exec", cid, "id", "-u"], timeout=30)
    assert uid.returncode == 0 and uid.stdout.strip() not in ("", "0"), said(uid)
    # the image's uvicorn is the one penguin/web.py wraps: each answer's head leaves with its body
    meta = command(["docker", "exec", cid, "curl", "-fsS", "http://127.0.0.1:3000/metadata"], timeout=30)
    assert meta.returncode == 0, said(meta)
    assert json.loads(meta.stdout).get("heads_with_bodies") is True, meta.stdout[:200]


def test_pins_reach_one_version(stack):
    """Through the admin port (the operator's way in: pins apply there; the public port has them off)."""
    r = httpx.post(f"{URL}/predict", json={"instances": ROWS[:1]}, timeout=10)
    print(
        f"\none request: HTTP {r.status_code}, X-Model-Version {r.headers.get('x-model-version')}, "
        f"X-Canary-Route {r.headers.get('x-canary-route')}"
    )
    for value, want in (("always", GREEN), ("never", BLUE)):
        pinned = Load(
            ADMIN_URL,
            rows=ROWS,
            timeout=10,
            check_version_field=True,
            workers=1,
            max_requests=20,
            max_seconds=120,
            headers={"X-Canary": value},
        ).run()
        assert not pinned.not_ok(), tally(pinned.answers)
        assert tally(pinned.answers) == {want: 20}, f"X-Canary: {value}: {tally(pinned.answers)}"


def check_split(weight: int, requests: int = 1000) -> None:
    """`requests` answers from 4 keep-alive clients within 120 s, all 200, both versions, green's share binomial."""
    split = load(workers=4, max_requests=requests, max_seconds=120).run()
    counts = tally(split.answers)
    print(f"\nsplit at {weight}%: {dict(counts)}")
    assert len(split.answers) == requests, f"only {len(split.answers)} of {requests} requests within 120s"
    assert not split.not_ok(), counts
    assert set(counts) == {BLUE, GREEN}, counts
    assert_split(counts[GREEN], requests, weight)


def test_split_is_90_10(stack):
    check_split(10)


# ---------------------------------------------------------------------------------------------- changes under load
def change_under_load(
    argv: list[str],
    expect_after: str,
    *,
    requests: int,
    workers: int,
    rate: float,
    before: int,
    min_after: int,
    command_timeout: float,
    keepalive: bool = True,
    within: float = 120.0,
    name: str = "",
) -> str:
    """Clients that never resend (paced to `rate` per second, at most `requests` in `within` seconds); after
    `before` answers run the command; then `min_after` requests sent after it returned. Every request must be
    answered 200, and every one sent after the command returned by `expect_after`. Returns the command's output."""
    clients = load(workers=workers, max_requests=requests, max_seconds=within, rate=rate, keepalive=keepalive)
    began = time.monotonic()
    with clients:
        clients.wait_for(0, before, timeout=within)
        started = time.monotonic()
        result = command(argv, timeout=command_timeout)
        returned = time.monotonic()
        clients.wait_for(returned, min_after, timeout=max(0.0, began + within - returned))
    after = clients.since(returned)
    name = name or shlex.join([Path(argv[0]).name, *argv[1:2]])
    print(
        f"\n`{name}` (rc {result.returncode}, {returned - started:.2f}s): "
        f"{len(clients.answers)} requests by {workers} clients at <={rate:g}/s "
        f"({'keepalive' if keepalive else 'a connection per request'}); "
        f"before it: {dict(tally([a for a in clients.answers if a.sent < started]))}; "
        f"sent after it returned: {dict(tally(after))}\n{result.stdout}{result.stderr}"
    )
    assert result.returncode == 0, said(result)
    assert not clients.not_ok(), tally(clients.not_ok())
    assert len(after) >= min_after, f"only {len(after)} requests after the command returned (wanted {min_after})"
    wrong = [a for a in after if a.version != expect_after]
    assert not wrong, (
        f"{len(wrong)} answers from other than {expect_after} after the command returned "
        f"(first sent {(min(a.sent for a in wrong) - returned) * 1000:.0f} ms after)"
    )
    return result.stdout + result.stderr


@pytest.mark.parametrize("name", ["set-weight", "promote", "rollback", "shadow", "deploy", "finalize", "labels"])
def test_commands_act_on_compose(name):
    assert "--compose" in command([CANARY, name, "--help"], timeout=60).stdout


def test_weight_changes_and_rollback_under_keepalive_load(stack):
    script = (
        'for w in 30 70 5 50 100 0 25 90 15 60 40 80; do "$0" set-weight "$w" --compose -m e2e || exit 1; done\n'
        '"$0" rollback --compose -m e2e'
    )
    change_under_load(
        ["bash", "-c", script, CANARY],
        BLUE,
        requests=20000,
        workers=16,
        rate=150,
        before=200,
        min_after=300,
        command_timeout=240,
        name="12 set-weight and a rollback",
    )


def test_shadow_compares_greens_answers_under_keepalive_load(stack):
    # green at 0%: blue answers everyone, nginx's relay passes each /predict on to green, the answers are compared
    out = change_under_load(
        [CANARY, "shadow", "--compose", "--seconds", "8"],
        BLUE,
        requests=5000,
        workers=8,
        rate=100,
        before=100,
        min_after=100,
        command_timeout=120,
    )
    assert re.search(r"mirrored [1-9][0-9]* requests", out), out


def test_promote_with_a_connection_per_request(stack):
    change_under_load(
        [CANARY, "promote", "--compose"],
        GREEN,
        requests=1500,
        workers=4,
        rate=50,
        before=100,
        min_after=200,
        command_timeout=120,
        keepalive=False,
    )


def test_set_weight_back_to_10_and_the_split_follows(stack):
    began = time.monotonic()
    result = command([CANARY, "set-weight", "10", "--compose"], timeout=60)
    took = time.monotonic() - began
    assert result.returncode == 0, said(result)
    last = json.loads((STATE / "changes.log").read_text().splitlines()[-1])
    print(
        f"\ncanary set-weight 10 --compose took {took:.2f} s "
        f"(nginx applied it {last.get('applied_ms')} ms after the write)"
    )
    check_split(10)


def test_labels_join_by_the_answering_version(stack):
    # 40 answers with their request ids, labelled with each row's true species
    species = pd.read_csv(ROOT / "data" / "data.csv")["target"].tolist()  # in the order of data_rows()
    answered = load(workers=1, max_requests=40, max_seconds=120).run()
    assert not answered.not_ok() and len(answered.answers) == 40, tally(answered.answers)
    lines = [json.dumps({"request_id": a.request_id, "label": species[a.row]}) for a in answered.answers]
    labels = command([CANARY, "labels", "--compose", "-"], stdin="\n".join(lines) + "\n")
    print(f"\n{labels.stdout}{labels.stderr}")
    assert labels.returncode == 0 and "joined 40 labels" in labels.stdout, said(labels)
    quality = command([CANARY, "quality", "--compose", "--json"])
    assert quality.returncode == 0, said(quality)
    versions = json.loads(quality.stdout)["versions"]
    print(f"canary quality --compose: labelled rows { ({v['version']: v['labelled'] for v in versions}) }")
    assert sum(v["labelled"] for v in versions) == 40, versions


# ---------------------------------------------------------------------------------------------- the next release
@pytest.mark.parametrize("step, expect_after", [(f"deploy {NEXT}", BLUE), ("promote", NEXT), ("finalize", NEXT)])
def test_next_release_under_keepalive_load(stack, step, expect_after):
    # v1.2.0 from its image: deploy (in place of ml-green, at 0%), promote, finalize (ml-blue takes it over)
    change_under_load(
        [CANARY, *step.split(), "--compose", "-m", "container-e2e"],
        expect_after,
        requests=30000,
        workers=16,
        rate=100,
        before=200,
        min_after=300,
        command_timeout=400,
    )


def test_history_lists_the_release(stack):
    history = command([CANARY, "history", "--compose", "--limit", "6"])
    print(f"\n{history.stdout}")
    assert history.returncode == 0, said(history)
