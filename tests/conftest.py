"""Shared fixtures: a private BentoML home with both models trained once, and real processes on free ports.

BENTOML_HOME is set before anything imports bentoml, so no test touches the user's model store.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from penguin.features import EXAMPLE

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXAMPLE_ROW = dict(EXAMPLE)
NEXT = "v1.2.0"  # the next declared version: a healthy candidate
WEAK = "v1.9.0"  # a clearly worse model from the existing recipes: logistic regression on bill depth alone
TRAIN = {
    NEXT: ["--version", NEXT, "--algorithm", "random_forest"],
    WEAK: ["--version", WEAK, "--algorithm", "logistic_regression", "--features", "bill_depth_mm"],
}
T = TypeVar("T")
_HOME = Path(tempfile.mkdtemp(prefix="canary-tests-bentoml-"))
_BASETEMP = Path(tempfile.mkdtemp(prefix="canary-tests-tmp-")) / "base"  # pytest's tmp_path folders, this run's own


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config) -> None:
    # A CI time-out (SIGTERM) unwinds like Ctrl-C, so the fixtures' `finally` still stops every process.
    signal.signal(signal.SIGTERM, _interrupt)
    if config.option.basetemp is None:
        # Not /tmp/pytest-of-USER: every pytest run on the machine makes that one 0700 again (another run at the same
        # time would cut nginx's workers off from the state folders below it; see `traversable`).
        config.option.basetemp = str(_BASETEMP)
    os.environ["BENTOML_HOME"] = str(_HOME)
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    os.environ.pop("MODEL_VERSION", None)
    for name in [n for n in os.environ if n.startswith("CANARY_")]:
        del os.environ[name]


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)
    shutil.rmtree(_BASETEMP, ignore_errors=True)


def traversable(path: Path) -> Path:
    """`path` and its folders up to the system's temporary folder made traversable by other users (o+x, not
    readable): when the tests run as root, nginx's workers run as an unprivileged user (www-data) and go through
    them to the stack's state folder, which keeps itself private (0710, their group)."""
    top = Path(tempfile.gettempdir()).resolve()
    for folder in [path, *path.parents]:
        if folder == top or top not in folder.parents:
            break
        if not folder.exists():
            continue  # made later, by the stack itself
        found = folder.stat()
        if found.st_uid == os.geteuid() and not found.st_mode & 0o001:
            folder.chmod(found.st_mode & 0o7777 | 0o011)
    return path


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """pytest's own per-test folder, traversable (see `traversable`): the local stack's state folder lives there."""
    return traversable(tmp_path)


_GIVEN: set[int] = set()


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range, never the same twice in a run: a port bind(0) gives
    is one the next outgoing connection (a client's, nginx's to a backend) may take before the stack listens on it."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    low, high = 10000, max(ephemeral - 1, 10100)
    chooser = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        port = chooser.randint(low, high)
        if port in _GIVEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {low}-{high} after 500 tries")


def settled(read: Callable[[], T], done: Callable[[T], bool], timeout: float, step: float = 0.05) -> T:
    """`read()` again until `done` says its value is whole or `timeout` seconds pass; the last value (the test judges
    it). For what comes just after an answer: nginx's log line, BentoML's request counter."""
    deadline = time.monotonic() + timeout
    while not done(value := read()) and time.monotonic() < deadline:
        time.sleep(step)
    return value


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command from the project folder; fail the test with its output if it fails."""
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{argv} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def trained(bentoml_home, tmp_path_factory) -> Path:
    """Both versions in the private store; returns the folder the archives were exported to."""
    export_dir = tmp_path_factory.mktemp("exported")
    run([sys.executable, "train_model.py", "--export-dir", str(export_dir)])
    return export_dir


@pytest.fixture(scope="session")
def more_versions(trained) -> tuple[str, str]:
    """The next version and the weak one, trained into the private store (kept when already there)."""
    for argv in TRAIN.values():
        run([sys.executable, "train_model.py", *argv, "--no-export"])
    return NEXT, WEAK


@pytest.fixture(scope="session")
def foreign_bentos(bentoml_home, tmp_path_factory) -> dict:
    """The two services that are not ours (tests/services/: wine, diabetes), each version trained and built into a
    Bento once, in order (baseline, good, worse), and exported as folders (tests/foreign.py)."""
    from foreign import prepare

    return prepare(tmp_path_factory.mktemp("foreign-bentos"))


def data_rows() -> list[dict]:
    """Every row of data/data.csv as a request's instance (features only, null where a value is missing)."""
    import pandas as pd

    frame = pd.read_csv(ROOT / "data" / "data.csv").drop(columns="target")
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


@contextmanager
def bentoml_serve(target: list[str], env: dict[str, str] | None = None):
    """A real `bentoml serve` on a free loopback port, run and stopped as the stack runs its backends."""
    from canary_kit.stacks.backends import wait_ready
    from canary_kit.stacks.local import Child

    port = free_port()
    argv = [str(BIN / "bentoml"), "serve", *target, "--host", "127.0.0.1", "--port", str(port)]
    log = Path(tempfile.mkdtemp(prefix="bentoml-serve-")) / "serve.log"
    child = Child("bentoml serve", argv, log, env or {}, ROOT)
    try:
        child.start()
        wait_ready([child], {"service": f"http://127.0.0.1:{port}/readyz"}, timeout=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        child.stop()
        shutil.rmtree(log.parent, ignore_errors=True)


def local_settings(state_dir: Path, **overrides):
    """Settings for a stack on free ports with its state in `state_dir`."""
    from canary_kit.core.config import Settings

    values = dict(
        project_dir=ROOT,
        state_dir=state_dir,
        port=free_port(),
        blue_port=free_port(),
        green_port=free_port(),
        green_port_b=free_port(),
        bentoml_home=_HOME,
        ready_timeout=120,
    )
    return Settings(**{**values, **overrides})


@contextmanager
def running_stack(state_dir: Path, **overrides):
    """A whole local stack (blue, green, nginx) from the service's code, stopped whatever happens."""
    from canary_kit.stacks.local import Stack

    running = Stack(local_settings(traversable(state_dir), **overrides)).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def stack(trained, tmp_path_factory):
    """The stack shared by the integration tests that leave it as they found it."""
    with running_stack(tmp_path_factory.mktemp("state")) as running:
        yield running


@pytest.fixture
def own_stack(trained, tmp_path):
    """A stack of the test's own, for tests that kill, overload or reconfigure it."""
    with running_stack(tmp_path) as running:
        yield running


def nginx_pids(stack) -> tuple[int, list[int]]:
    """The running nginx's master pid and its workers' pids: a reload would replace the workers."""
    import psutil

    master = next(c for c in stack.children if c.name == "nginx").proc.pid
    return master, sorted(p.pid for p in psutil.Process(master).children())


def canary_process(state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`canary ARGS --state-dir STATE_DIR` as its own process, as an operator runs it."""
    argv = [sys.executable, "-m", "canary_kit", *args, "--state-dir", str(state_dir)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)


def k8s_served(**given):
    """The served model of this project's settings ([tool.canary]), as `canary k8s render` builds it."""
    from canary_kit.core.config import Settings
    from canary_kit.k8s.served import ServedModel

    return ServedModel.from_settings(Settings(), **given)


def nginx_applies(settings) -> dict:
    """The routing state the local stack's nginx applies, from its admin socket (one worker's answer)."""
    import httpx

    from canary_kit.stacks.nginx import admin_socket

    with httpx.Client(transport=httpx.HTTPTransport(uds=str(admin_socket(settings))), timeout=5) as client:
        return client.get("http://nginx/_nginx/split").json()
