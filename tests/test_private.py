"""The state folder is private (#27): another local user reads no log and no ledger and reaches no socket, nginx's
workers do not run as root, the shadow relay takes copies from its own nginx only, the backend's address is told to
this host's clients only, and a folder that someone else could change is refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import time

import httpx
import psutil
import pytest

from canary_kit.core.errors import CanaryError
from canary_kit.observe import ledger
from canary_kit.stacks import nginx
from canary_kit.stacks.targets import LocalTarget
from canary_kit.steer.control import set_weight
from conftest import EXAMPLE_ROW, canary_process, local_settings, running_stack

pytestmark = pytest.mark.integration
SYSTEM_PYTHON = "/usr/bin/python3"  # one that any user may run (not a virtualenv under /root)
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None or not os.path.exists(SYSTEM_PYTHON),
    reason="needs root, runuser and /usr/bin/python3",
)

# Run as another local user: open each file, connect to each socket; print what each attempt got.
PROBE = """
import json, socket, sys
out = {}
for path in sys.argv[1:]:
    try:
        if path.endswith(".sock"):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.close()
        else:
            open(path, "rb").read(1)
        out[path] = "ok"
    except OSError as exc:
        out[path] = type(exc).__name__
print(json.dumps(out))
"""


def as_nobody(*paths: str) -> dict[str, str]:
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", SYSTEM_PYTHON, "-c", PROBE, *paths],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@ROOT_ONLY
def test_another_user_reads_no_log_nor_the_ledger_and_reaches_no_socket_and_workers_are_not_root(own_stack):
    s = own_stack.settings
    assert httpx.post(f"{s.url}/predict", json={"instances": [EXAMPLE_ROW]}, timeout=10).status_code == 200
    with ledger.connect(s.state_dir):
        pass  # the ledger, as `canary labels` creates it
    private = [
        s.state_dir / "logs" / "access.log",
        s.state_dir / "logs" / "nginx-error.log",
        s.state_dir / "logs" / "blue.log",
        s.state_dir / ledger.LEDGER,
        s.state_dir / "canary.conf",  # holds the operator's secret
        s.state_dir / "canary-public.inc",  # and the relay's
        s.state_dir / "canary-internal.inc",  # both
        s.state_dir / "changes.log",
        nginx.admin_socket(s),
        nginx.shadow_socket(s),
    ]
    assert set_weight(LocalTarget(s.state_dir), 50)[1].green_weight == 50  # the change log, as the kit writes it
    tried = as_nobody(*(str(p) for p in private))
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in [s.state_dir, *private]}
    master = next(c for c in own_stack.children if c.name == "nginx").proc.pid
    workers = {p.pid: p.username() for p in psutil.Process(master).children()}
    print(f"\nas nobody: {tried}\nmodes: {modes}\nnginx master {psutil.Process(master).username()}, workers {workers}")
    assert set(tried.values()) == {"PermissionError"}, tried
    assert workers and "root" not in workers.values(), workers
    # the workers still read the routing state per request (at 50% now) and write their temporary files
    seen = {httpx.get(f"{s.url}/health", timeout=5).headers["x-canary-route"] for _ in range(60)}
    assert seen == {"blue", "green"}, seen
    big = {"instances": [EXAMPLE_ROW] * 1000}  # ~200 KB (the most rows the service takes): more than a socket buffer
    assert httpx.post(f"{s.url}/predict", json=big, timeout=30).status_code == 200


def relay(settings, headers: dict[str, str]) -> int:
    transport = httpx.HTTPTransport(uds=str(nginx.shadow_socket(settings)))
    with httpx.Client(transport=transport, timeout=5) as client:
        body = {"instances": [EXAMPLE_ROW]}
        return client.post("http://nginx/_canary/relay", json=body, headers=headers).status_code


def shadow_lines(settings, rid: str) -> list[dict]:
    log = settings.state_dir / "logs" / "access.log"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("shadow") and e.get("request_id") == rid]


def test_the_shadow_relay_refuses_a_copy_without_nginxs_secret_and_logs_none(own_stack):
    s = own_stack.settings
    set_weight(LocalTarget(s.state_dir), 0, shadow=True)
    forged = "0123456789abcdef0123456789abcdef"
    codes = [
        relay(s, {"X-Request-ID": forged, "X-Canary-URI": "/predict"}),
        relay(s, {"X-Request-ID": forged, "X-Canary-URI": "/predict", "X-Canary-Relay": "guess"}),
        relay(s, {"X-Request-ID": forged, "X-Canary-URI": "/predict", "X-Canary-Relay": ""}),
    ]
    live = httpx.post(f"{s.url}/predict", json={"instances": [EXAMPLE_ROW]}, timeout=10)
    rid = live.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while not shadow_lines(s, rid) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    print(
        f"\nforged copies answered {codes}; logged: {len(shadow_lines(s, forged))}; the live request's copy: "
        f"{len(shadow_lines(s, rid))} line(s)"
    )
    assert codes == [403, 403, 403]
    assert shadow_lines(s, forged) == []
    assert len(shadow_lines(s, rid)) == 1  # nginx's own copy still goes through, with the secret
    conf = (s.state_dir / "canary-internal.inc").read_text()  # the relay's server
    assert conf.count('X-Canary-Relay ""') == 1  # the secret is never passed on to green


def test_the_backend_address_is_told_to_this_hosts_clients_only(trained, tmp_path):
    other = next(
        (
            a.address
            for addrs in psutil.net_if_addrs().values()
            for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")
        ),
        None,
    )
    if other is None:
        pytest.skip("no address but loopback on this machine")
    with running_stack(tmp_path, host="0.0.0.0") as stack:
        port = stack.settings.port
        local = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).headers
        outside = httpx.get(f"http://{other}:{port}/health", timeout=5).headers
    print(f"\nfrom 127.0.0.1: {local.get('x-canary-upstream')}; from {other}: {outside.get('x-canary-upstream')}")
    assert local["x-canary-upstream"].startswith("127.0.0.1:")
    assert "x-canary-upstream" not in outside and outside["x-canary-route"] in ("blue", "green")


def test_a_state_folder_that_others_could_change_is_refused_in_one_line(tmp_path):
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
    for folder, why in [(open_folder, "is writable by others"), (theirs, "belongs to uid")]:
        if why == "belongs to uid" and os.geteuid() != 0:
            continue
        for command in (["up"], ["status"], ["set-weight", "20"]):
            result = canary_process(folder, *command)
            print(f"{command[0]} in {folder.name}: exit {result.returncode}: {result.stderr.strip()}")
            assert result.returncode == 1 and why in result.stderr, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert sorted(p.name for p in folder.iterdir()) == []  # nothing written in it


@ROOT_ONLY
def test_a_state_folder_the_workers_cannot_reach_is_refused_before_anything_starts(tmp_path):
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    settings = local_settings(closed / "state")
    with pytest.raises(CanaryError, match=r"cannot go through .*closed"):
        nginx.check_reachable(settings)
    assert not (closed / "state").exists()
