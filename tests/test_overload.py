"""Overload: thousands of keep-alive clients get answers, never errors. Beyond what the backends take, nginx
sheds the excess with a fast JSON 503 and Retry-After; its error log stays quiet; service resumes at once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from canary_kit.nginx import open_files_limit

from conftest import EXAMPLE_ROW
from load import Load, tally

pytestmark = pytest.mark.integration
CLIENTS, SECONDS = 2048, 15
SCRIPT = Path(__file__).with_name("overload.lua")

@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_2048_keepalive_clients_get_200_or_a_json_503_and_service_resumes(own_stack):
    settings = own_stack.settings
    assert open_files_limit() > CLIENTS + 100, "the open-files limit is too low to open 2,048 client connections"
    argv = ["wrk", "-t2", f"-c{CLIENTS}", f"-d{SECONDS}s", "--timeout", "12s", "-s", str(SCRIPT), f"{settings.url}/predict"]
    env = {**os.environ, "OVERLOAD_BODY": json.dumps({"instances": [EXAMPLE_ROW]})}
    run = subprocess.run(argv, capture_output=True, text=True, timeout=SECONDS + 60, env=env)
    result = json.loads(run.stdout.split("RESULT ", 1)[1]) if "RESULT " in run.stdout else None
    error_log = (settings.state_dir / "logs" / "nginx-error.log").read_text().splitlines()
    after = Load(settings.url, workers=8, max_requests=1000, max_seconds=120).run()
    print(f"\n{CLIENTS} keep-alive clients for {SECONDS} s: {result}\nnginx error log: {len(error_log)} lines "
          f"{Counter(line.split('] ', 1)[0][-6:] for line in error_log)}\n1,000 requests after the load: "
          f"{dict(tally(after.answers))}\n{run.stdout[-600:]}")
    assert result is not None, run.stdout + run.stderr
    assert set(result["statuses"]) <= {"200", "503"} and result["statuses"].get("200", 0) > 0, result
    assert result["bad_503"] == 0, "a 503 without a JSON body or Retry-After"
    assert all(result["errors"][kind] == 0 for kind in ("connect", "read", "write", "timeout")), result["errors"]
    assert len(error_log) < 1000
    assert len(after.answers) == 1000 and set(tally(after.answers)) <= {"v1.0.0", "v1.1.0"}, "not all 200"
