"""Overload: thousands of keep-alive clients get answers, never errors. Beyond what the backends take, nginx
sheds the excess with a fast JSON 503 and Retry-After; its error log stays quiet; service resumes within seconds.

When 2,048 clients vanish at once, nginx counts their requests in flight until it has read every closed
connection, so a request sent in that moment may still be shed (with a JSON 503, never an error). The test
measures how long that lasts, bounds it, and then asks that every one of 1,000 requests is answered 200."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from canary_kit.core import accesslog
from canary_kit.stacks.nginx import open_files_limit
from conftest import EXAMPLE_ROW
from load import Load, tally

pytestmark = pytest.mark.integration
CLIENTS, SECONDS = 2048, 15
RECOVERY_SECONDS, STREAK = 5.0, 20
SCRIPT = Path(__file__).with_name("overload.lua")


def recover(url: str) -> tuple[float, Counter, bool]:
    """Single requests until STREAK in a row answer 200 (at most RECOVERY_SECONDS): time taken, answers, success."""
    began, seen, streak = time.monotonic(), Counter(), 0
    with httpx.Client(timeout=15, transport=httpx.HTTPTransport(retries=0)) as client:
        while streak < STREAK and time.monotonic() - began < RECOVERY_SECONDS:
            try:
                answer = client.post(f"{url}/predict", json={"instances": [EXAMPLE_ROW]})
                status = (
                    answer.status_code if answer.status_code != 503 or answer.json().get("error") else "503 no JSON"
                )
            except (httpx.HTTPError, ValueError) as error:
                status = type(error).__name__
            seen[status] += 1
            streak = streak + 1 if status == 200 else 0
    return time.monotonic() - began, seen, streak == STREAK


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_2048_keepalive_clients_get_200_or_a_json_503_and_service_resumes(own_stack):
    settings = own_stack.settings
    assert open_files_limit() > CLIENTS + 100, "the open-files limit is too low to open 2,048 client connections"
    argv = [
        "wrk",
        "-t2",
        f"-c{CLIENTS}",
        f"-d{SECONDS}s",
        "--timeout",
        "12s",
        "-s",
        str(SCRIPT),
        f"{settings.url}/predict",
    ]
    env = {**os.environ, "OVERLOAD_BODY": json.dumps({"instances": [EXAMPLE_ROW]})}
    run = subprocess.run(argv, capture_output=True, text=True, timeout=SECONDS + 60, env=env)
    result = json.loads(run.stdout.split("RESULT ", 1)[1]) if "RESULT " in run.stdout else None
    error_log = (settings.state_dir / "logs" / "nginx-error.log").read_text().splitlines()
    took, recovery, recovered = recover(settings.url)
    after = Load(settings.url, workers=8, max_requests=1000, max_seconds=120).run()
    logged = accesslog.parse((settings.state_dir / "logs" / "access.log").read_text())
    logged = logged[-(sum(recovery.values()) + 1000) :]
    refused = Counter((e["status"], e["upstream_status"]) for e in logged if e["status"] != 200)
    print(
        f"\n{CLIENTS} keep-alive clients for {SECONDS} s: {result}\nnginx error log: {len(error_log)} lines "
        f"{Counter(line.split('] ', 1)[0][-6:] for line in error_log)}\nafter the load, {STREAK} answers 200 in a "
        f"row within {took * 1000:.0f} ms: {dict(recovery)}\n1,000 requests after that: "
        f"{dict(tally(after.answers))}\nnginx logged those not 200 as (status, upstream status): {dict(refused)}"
        f"\n{run.stdout[-600:]}"
    )
    assert result is not None, run.stdout + run.stderr
    assert set(result["statuses"]) <= {"200", "503"} and result["statuses"].get("200", 0) > 0, result
    assert result["bad_503"] == 0, "a 503 without a JSON body or Retry-After"
    assert all(result["errors"][kind] == 0 for kind in ("connect", "read", "write", "timeout")), result["errors"]
    assert len(error_log) < 1000
    assert recovered and set(recovery) <= {200, 503}, f"not serving {RECOVERY_SECONDS:.0f} s after the load"
    assert len(after.answers) == 1000 and set(tally(after.answers)) <= {"v1.0.0", "v1.1.0"}, "not all 200"
