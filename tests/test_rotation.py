"""Logs rotated by size (#27): nginx reopens its logs after a rotation whether it runs as root (its workers as
www-data) or as another user; under load, logs past their size are rotated by `canary up`'s supervisor with no failed
request and no answer missing from the ledger; and an access log truncated in place loses the ledger no answer."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from canary_kit.core import logfiles, routing
from canary_kit.observe import ledger
from canary_kit.stacks.backends import wait_ready
from canary_kit.stacks.local import Child
from canary_kit.stacks.nginx import LocalNginx
from canary_kit.stacks.supervise import Supervisor
from canary_kit.stacks.targets import LocalTarget
from conftest import data_rows, local_settings, running_stack
from load import Load, tally

pytestmark = pytest.mark.integration


def lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("runs_as", ["root", "nobody"])
def test_nginx_reopens_its_logs_after_a_rotation_as_root_and_as_another_user(tmp_path, runs_as):
    """A bare nginx (no backend: each request a JSON 503, logged): 40 requests, the access and error logs rotated
    (renamed, a fresh file in place, SIGUSR1), 40 more. As root its master gives the new files to the workers' user
    (www-data); as another user they stay that user's; either way 0600 and every line in one of the two files."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser")
    settings = local_settings(tmp_path / "state")
    nginx = LocalNginx(settings)
    nginx.write()
    argv = nginx.command()
    if runs_as == "nobody":
        account = pwd.getpwnam("nobody")
        for path in [settings.state_dir, *settings.state_dir.rglob("*")]:
            os.chown(path, account.pw_uid, account.pw_gid)
        argv = ["runuser", "-u", "nobody", "--", *argv]
    routing.write(settings.state_dir / routing.STATE_FILE, routing.RoutingState(green_weight=50, serial=1))
    server = Child("nginx", argv, tmp_path / "nginx.out")
    access = settings.state_dir / "logs" / "access.log"
    try:
        server.start()
        wait_ready([server], {"nginx": f"{settings.url}/_nginx/ping"}, timeout=10)
        master = int((settings.state_dir / "nginx.pid").read_text())
        with httpx.Client(timeout=5) as client:
            before = [client.get(f"{settings.url}/health").status_code for _ in range(40)]
            for name in ("access.log", "nginx-error.log"):
                logfiles.rotate_reopened(settings.state_dir / "logs" / name, 3, lambda: os.kill(master, signal.SIGUSR1))
            deadline = time.monotonic() + 10
            after = []
            while lines(access) == 0 and time.monotonic() < deadline:  # the workers reopen at their next turn
                after.append(client.get(f"{settings.url}/health").status_code)
                time.sleep(0.05)
            after += [client.get(f"{settings.url}/health").status_code for _ in range(40)]
        rotated = access.with_name("access.log.1")
        deadline = time.monotonic() + 5
        while lines(rotated) + lines(access) < len(before) + len(after) and time.monotonic() < deadline:
            time.sleep(0.05)  # nginx logs a request once its answer is sent: the last line may come a moment after
        found = access.stat()
        print(
            f"\nas {runs_as}: {lines(rotated)} lines in access.log.1, {lines(access)} in access.log "
            f"(owner {pwd.getpwuid(found.st_uid).pw_name}, mode {found.st_mode & 0o777:o}); "
            f"{len(before) + len(after)} requests"
        )
        assert set(before) | set(after) == {503}  # no backend: nginx's JSON 503, logged
        assert lines(rotated) == 40 and lines(access) == len(after), (lines(rotated), lines(access), len(after))
        assert found.st_mode & 0o777 == 0o600
        owner = pwd.getpwuid(found.st_uid).pw_name
        assert owner == ("nobody" if runs_as == "nobody" else nginx.worker_user()), owner
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rotating(trained, tmp_path_factory):
    """A stack whose logs rotate past 64 KiB (3 kept), supervised as `canary up` does, with a ledger."""
    with running_stack(tmp_path_factory.mktemp("rotating"), log_max_bytes=65536, log_keep=3) as stack:
        with ledger.connect(stack.settings.state_dir):
            pass  # the ledger, as `canary labels` or `canary status` creates it
        supervisor = Supervisor(stack, lambda line: print(f"  supervisor: {line}"))
        stop = threading.Event()

        def supervise() -> None:
            while not stop.is_set():
                supervisor.tick()
                time.sleep(0.25)

        thread = threading.Thread(target=supervise, daemon=True)
        thread.start()
        try:
            yield stack.settings
        finally:
            stop.set()
            thread.join(timeout=30)


def in_ledger(settings, request_ids: set[str], wait: float = 5.0) -> set[str]:
    """Which of `request_ids` the ledger holds an answer of, after it caught up with the log (for at most `wait`
    s: nginx logs a request once it has sent its answer, so the last lines may come a moment after)."""
    target = LocalTarget(settings.state_dir)
    deadline = time.monotonic() + wait
    while True:
        with ledger.connect(settings.state_dir) as conn:
            ledger.catch_up(target, conn, target.retention)
            found = request_ids & {rid for (rid,) in conn.execute("SELECT DISTINCT request_id FROM answers")}
        if found == request_ids or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_logs_past_their_size_are_rotated_under_load_with_no_failed_request_and_no_answer_missing(rotating):
    logs = rotating.state_dir / "logs"
    with Load(rotating.url, workers=8, max_requests=4000, max_seconds=120, rate=400, rows=data_rows()) as load:
        load.wait_for(0, 4000, timeout=120)
        time.sleep(2.5)  # one more look by the supervisor
    answered = {a.request_id for a in load.answers if a.status == 200}
    found = in_ledger(rotating, answered)
    files = {p.name: p.stat().st_size for p in sorted(logs.iterdir())}
    print(f"\n{len(load.answers)} requests {dict(tally(load.answers))}; logs: {files}")
    print(f"answers in the ledger: {len(found)} of {len(answered)}")
    assert len(load.answers) == 4000 and not load.failed(), tally(load.answers)
    assert {"access.log.1", "access.log.2", "access.log.3"} <= set(files) and "access.log.4" not in files
    # looked at every 2 s (and read by the ledger first): a busy log overshoots by what comes in meanwhile
    assert all(size <= 2 * 2**20 for name, size in files.items() if name.startswith("access.log")), files
    assert found == answered, f"{len(answered - found)} answers missing from the ledger"


def test_a_backends_output_past_its_size_is_copied_and_truncated_and_written_on(rotating):
    """blue.log, which the backend holds open for appending: 70 KiB more of it (as if blue wrote them) make the
    supervisor copy it to blue.log.1 and empty it in place; the next line goes to its start, not past a hole."""
    log = rotating.state_dir / "logs" / "blue.log"
    before = log.read_bytes()
    with open(os.open(log, os.O_WRONLY | os.O_APPEND), "ab") as out:  # as the backend's output is opened
        out.write(b"x" * 70_000 + b"\n")
        deadline = time.monotonic() + 10
        while not log.with_name("blue.log.1").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        out.write(b"the next line\n")
        out.flush()
    rotated = log.with_name("blue.log.1").read_bytes()
    print(f"\nblue.log.1: {len(rotated)} bytes; blue.log now: {log.read_bytes()[:40]!r}")
    assert rotated.startswith(before) and len(rotated) == len(before) + 70_001
    assert log.read_bytes().endswith(b"the next line\n") and log.stat().st_size < 1000


def test_an_access_log_truncated_in_place_loses_the_ledger_no_answer(rotating):
    """The ledger read the log; an operator empties it in place (`: > access.log`); 600 more requests, more than
    the log held before: every one of them is in the ledger (before, it kept its old offset and lost the head)."""
    access = rotating.state_dir / "logs" / "access.log"
    Load(rotating.url, workers=4, max_requests=200, max_seconds=60, rows=data_rows()).run()
    in_ledger(rotating, set())
    held = access.stat().st_size
    os.truncate(access, 0)
    after = Load(rotating.url, workers=8, max_requests=600, max_seconds=60, rows=data_rows()).run()
    answered = {a.request_id for a in after.answers if a.status == 200}
    found = in_ledger(rotating, answered)
    print(f"\ntruncated at {held} bytes; then {len(after.answers)} requests, now {access.stat().st_size} bytes")
    print(f"answers in the ledger: {len(found)} of {len(answered)}")
    assert len(after.answers) == 600 and not after.failed(), tally(after.answers)
    assert found == answered, f"{len(answered - found)} answers missing from the ledger"
