"""A response's head leaves the worker together with its body, so a worker killed mid-answer leaves nginx nothing
it has begun to forward (nginx then fails the request over). Real uvicorn processes, raw sockets, both of uvicorn's
HTTP parsers; the app waits between head and body so the gap is wide and the outcome deterministic."""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
APP = """
import asyncio, sys, uvicorn
from penguin import web

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    query = scope["query_string"].decode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    if query == "stream":  # a stream whose first part is empty
        await send({"type": "http.response.body", "body": b"", "more_body": True})
    print("head sent", flush=True)
    if query == "fail":
        raise RuntimeError("failed after the head")
    await asyncio.sleep(30 if query == "stream" else float(query or 0))  # the framework's layers, stretched
    await send({"type": "http.response.body", "body": b"ok"})

if sys.argv[2] == "held":
    web.send_heads_with_bodies()
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http=sys.argv[3], log_level="warning")
"""


def serve(held: bool, parser: str):
    """A uvicorn process running APP, and a connection to it."""
    port = free_port()
    argv = [sys.executable, "-c", APP, str(port), "held" if held else "plain", parser]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            return proc, socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise AssertionError(f"uvicorn did not listen within 20 s (exit code {proc.returncode})")


def stop(proc: subprocess.Popen, conn: socket.socket) -> None:
    proc.kill()
    proc.wait(10)
    proc.stdout.close()
    conn.close()


def head_sent(proc: subprocess.Popen, seconds: float = 10) -> bool:
    """True once the app has handed its head to the server (it prints a line then)."""
    ready = select.select([proc.stdout], [], [], seconds)[0]
    return bool(ready) and proc.stdout.readline() == b"head sent\n"


def read(conn: socket.socket, done=lambda got: False, seconds: float = 10) -> bytes:
    """Bytes the server sends until `done(bytes so far)`, it closes, or `seconds` pass."""
    got, deadline = b"", time.monotonic() + seconds
    while not done(got) and (left := deadline - time.monotonic()) > 0 and select.select([conn], [], [], left)[0]:
        try:
            chunk = conn.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.parametrize("parser", ["httptools", "h11"])
@pytest.mark.parametrize(
    "held, query", [(True, "30"), (True, "stream"), (False, "30")], ids=["held", "stream", "plain"]
)
def test_a_worker_killed_between_head_and_body_leaves_no_half_answer(held, query, parser):
    proc, conn = serve(held, parser)
    try:
        conn.sendall(f"GET /?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())  # head now, the body in 30 s
        assert head_sent(proc), "the app did not start its answer within 10 s"
        # held: wait a moment for bytes that must not come; plain: until the head has come
        before_kill = read(conn, lambda got: got.endswith(b"\r\n\r\n"), seconds=0.5 if held else 10)
        proc.send_signal(signal.SIGKILL)
        after_kill = read(conn)
    finally:
        stop(proc, conn)
    seen = before_kill + after_kill
    print(
        f"\n{parser}, {'held' if held else 'plain'} ?{query}: "
        f"{len(before_kill)} bytes before the kill, {len(after_kill)} after"
    )
    if held:  # nothing at all: nginx fails the request over to the other version
        assert seen == b"", f"a half answer reached the client: {seen!r}"
    else:  # the control: without it, uvicorn sends the head alone, and a kill leaves it cut
        assert seen.startswith(b"HTTP/1.1 200") and not seen.endswith(b"ok"), seen


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_held_heads_still_answer_whole_kept_alive_head_and_close(parser):
    whole = lambda got: got.endswith(b"\r\n\r\nok")  # noqa: E731
    head = lambda got: got.endswith(b"\r\n\r\n")  # noqa: E731
    proc, conn = serve(True, parser)
    try:
        answers = []
        for _ in range(3):
            conn.sendall(b"GET /?0.01 HTTP/1.1\r\nHost: x\r\n\r\n")
            answers.append(read(conn, whole))
        conn.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        head_only = read(conn, head)
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        closing = read(conn)  # until the server closes
        proc_2, conn_2 = serve(True, parser)
    finally:
        stop(proc, conn)
    try:  # HEAD on a closing connection: no body bytes at all, the head goes out as the connection closes
        conn_2.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head_closing = read(conn_2)
    finally:
        stop(proc_2, conn_2)
    assert all(a.startswith(b"HTTP/1.1 200") and whole(a) for a in answers), answers
    assert head_only.startswith(b"HTTP/1.1 200") and head(head_only), head_only
    assert closing.startswith(b"HTTP/1.1 200") and whole(closing), closing
    assert head_closing.startswith(b"HTTP/1.1 200") and head(head_closing), head_closing


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_an_app_failing_after_its_head_sends_no_half_answer(parser):
    proc, conn = serve(True, parser)
    try:
        conn.sendall(b"GET /?fail HTTP/1.1\r\nHost: x\r\n\r\n")
        seen = read(conn)  # until the server closes the connection
    finally:
        stop(proc, conn)
    assert seen == b"", f"a half answer reached the client: {seen!r}"  # closed with nothing: nginx fails it over


def test_a_uvicorn_without_the_expected_layout_is_reported_not_wrapped(monkeypatch, caplog):
    """Another uvicorn whose cycles keep their state elsewhere: nothing is wrapped, the service logs an error and
    /metadata says heads_with_bodies false (not a silent two-write answer)."""
    import importlib
    import logging
    import types

    from penguin import web

    class Cycle:  # no transport / response_started on itself
        def __init__(self) -> None:
            self.state = {}

        async def send(self, message) -> None:
            pass

    fake = types.SimpleNamespace(RequestResponseCycle=Cycle)
    real = importlib.import_module
    monkeypatch.setattr(
        importlib, "import_module", lambda name, *a: fake if name.startswith("uvicorn.protocols") else real(name, *a)
    )
    monkeypatch.setattr(web, "WRAPPED", [])
    with caplog.at_level(logging.ERROR, logger=web.logger.name):
        wrapped = web.send_heads_with_bodies()
    print(f"\nwrapped: {wrapped}; logged: {[r.getMessage()[:80] for r in caplog.records]}")
    assert wrapped == [] and web.heads_with_bodies() is False and Cycle.send.__name__ == "send"
    assert any(r.levelno == logging.ERROR and "found no uvicorn" in r.getMessage() for r in caplog.records)
