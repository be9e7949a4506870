"""The load client the zero-failure tests count with (tests/load.py), against a tiny HTTP server of the test's own:
a request the server reads and drops is one failed request and is never sent again; an idle keep-alive connection
the server closed is replaced before the next request, which does not fail; an answer that closes its connection is
kept, and one whose body cannot be read is a failed request, never a lost one."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager

from load import Load

BODY = b'{"ok": 1}'


@contextmanager
def server(drop_every: int = 0, close_after_answer: bool = False, say_close: bool = False, body: bytes = BODY):
    """A keep-alive HTTP/1.1 server on a free loopback port; yields its URL and the requests it read. It drops
    (closes without answering) every `drop_every`-th request, or closes each connection after answering: with no
    `Connection: close` (as a server whose idle timeout ran out) or, with `say_close`, saying so."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    read: list[bytes] = []
    lock = threading.Lock()

    def handle(conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                while len(rest) < length:
                    data = conn.recv(65536)
                    if not data:  # the client hung up mid-body
                        return
                    rest += data
                buf = rest[length:]
                with lock:
                    read.append(rest[:length])
                    count = len(read)
                if drop_every and count % drop_every == 0:
                    return
                close = b"Connection: close\r\n" if say_close else b""
                conn.sendall(b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (close, len(body), body))
                if close_after_answer or say_close:
                    return

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", read
    finally:
        listener.close()


def test_a_dropped_request_is_one_failure_and_is_never_sent_twice():
    with server(drop_every=5) as (url, read):
        load = Load(url, workers=4, max_requests=200, max_seconds=20).run()
    print(f"\nsent {len(load.answers)}, the server read {len(read)}, failed {len(load.failed())}")
    assert len(load.answers) == len(read) == 200
    assert len(load.failed()) == 40 and all(a.status is None for a in load.failed())


def test_an_idle_connection_the_server_closed_is_replaced_and_nothing_fails():
    with server(close_after_answer=True) as (url, read):
        load = Load(url, workers=1, max_requests=40, max_seconds=20, rate=50).run()  # idle 20 ms between requests
    print(f"\nsent {len(load.answers)}, the server read {len(read)}, failed {len(load.failed())}")
    assert len(load.answers) == len(read) == 40 and not load.failed(), [a.error for a in load.failed()][:3]


def test_rows_are_sent_in_turn_across_the_workers():
    rows = [{"n": i} for i in range(7)]
    with server() as (url, read):
        Load(url, workers=3, max_requests=70, max_seconds=20, rows=rows).run()
    sent = sorted(read)
    print(f"\nthe server read {len(read)} bodies")
    assert all(sent.count(body) == 10 for body in set(sent)) and len(set(sent)) == 7


def test_answers_that_close_the_connection_are_kept_and_an_unreadable_body_is_a_failure_not_a_loss():
    with server(say_close=True) as (url, read):
        closing = Load(url, workers=2, max_requests=20, max_seconds=20, keep_bodies=True).run()
    with server(say_close=True, body=b"not json") as (url, garbled):
        unreadable = Load(url, workers=2, max_requests=20, max_seconds=20, keep_bodies=True).run()
    print(
        f"\nConnection: close: sent {len(closing.answers)}, read {len(read)}, failed {len(closing.failed())}; "
        f"not JSON: sent {len(unreadable.answers)}, read {len(garbled)}, failed {len(unreadable.failed())}"
    )
    assert len(closing.answers) == len(read) == 20 and not closing.failed()
    assert all(a.body == {"ok": 1} for a in closing.answers)
    assert len(unreadable.answers) == len(garbled) == 20 and len(unreadable.failed()) == 20
