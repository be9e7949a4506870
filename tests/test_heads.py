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
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    if scope["query_string"] == b"fail":
        raise RuntimeError("failed after the head")
    await asyncio.sleep(float(scope["query_string"] or 0))  # the framework's layers, stretched
    await send({"type": "http.response.body", "body": b"ok"})

if sys.argv[2] == "held":
    web.send_heads_with_bodies()
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http=sys.argv[3], log_level="warning")
"""


def serve(held: bool, parser: str):
    port = free_port()
    argv = [sys.executable, "-c", APP, str(port), "held" if held else "plain", parser]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            return proc, socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("uvicorn did not listen within 20 s")


def read_all(conn: socket.socket, seconds: float) -> bytes:
    """Every byte the server sends within `seconds` (until it closes)."""
    got, deadline = b"", time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and select.select([conn], [], [], left)[0]:
        try:
            chunk = conn.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.parametrize("parser", ["httptools", "h11"])
@pytest.mark.parametrize("held", [True, False], ids=["held", "plain"])
def test_a_worker_killed_between_head_and_body_leaves_no_half_answer(held, parser):
    proc, conn = serve(held, parser)
    try:
        conn.sendall(b"GET /?30 HTTP/1.1\r\nHost: x\r\n\r\n")  # head now, body in 30 s
        before_kill = read_all(conn, 0.5)
        proc.send_signal(signal.SIGKILL)
        after_kill = read_all(conn, 5)
    finally:
        proc.kill()
        proc.wait(10)
        conn.close()
    seen = before_kill + after_kill
    print(f"\n{parser}, {'held' if held else 'plain'}: {len(before_kill)} bytes before the kill, {len(after_kill)} after")
    if held:  # nothing at all: nginx fails the request over to the other version
        assert seen == b"", f"a half answer reached the client: {seen!r}"
    else:  # the control: without it, uvicorn sends the head alone, and a kill leaves it cut
        assert seen.startswith(b"HTTP/1.1 200") and not seen.endswith(b"ok"), seen


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_held_heads_still_answer_whole_kept_alive_head_and_close(parser):
    proc, conn = serve(True, parser)
    try:
        answers = []
        for _ in range(3):
            conn.sendall(b"GET /?0.01 HTTP/1.1\r\nHost: x\r\n\r\n")
            answers.append(read_all(conn, 0.5))
        conn.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        head_only = read_all(conn, 0.5)
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        last = read_all(conn, 5)  # the server closes after it
    finally:
        proc.kill()
        proc.wait(10)
        conn.close()
    assert all(a.startswith(b"HTTP/1.1 200") and a.endswith(b"\r\n\r\nok") for a in answers), answers
    assert head_only.startswith(b"HTTP/1.1 200") and head_only.endswith(b"\r\n\r\n"), head_only
    assert last.startswith(b"HTTP/1.1 200") and last.endswith(b"\r\n\r\nok"), last


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_an_app_failing_after_its_head_sends_no_half_answer(parser):
    proc, conn = serve(True, parser)
    try:
        conn.sendall(b"GET /?fail HTTP/1.1\r\nHost: x\r\n\r\n")
        seen = read_all(conn, 5)
    finally:
        proc.kill()
        proc.wait(10)
        conn.close()
    assert seen == b"", f"a half answer reached the client: {seen!r}"  # closed with nothing: nginx fails it over
