"""The load client the zero-failure tests count with (tests/load.py), against a tiny HTTP server of the test's own:
a request the server reads and drops is one failed request and is never sent again; an idle keep-alive connection
the server closed is replaced before the next request, which does not fail; an answer that closes its connection is
kept, and one whose body cannot be read is a failed request, never a lost one."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from load import Load

BODY = b'{"ok": 1}'


@contextmanager
def server(drop_every: int = 0, close_after_answer: bool = False, say_close: bool = False, body: bytes = BODY):
    """A keep-alive HTTP/1.1 server on a free loopback port (http.server); yields its URL and the bodies it read. It
    drops (closes without answering) every `drop_every`-th request, or closes each connection after answering: with
    no `Connection: close` (as a server whose idle timeout ran out) or, with `say_close`, saying so."""
    read: list[bytes] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms wait on the second

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            with lock:
                read.append(self.rfile.read(int(self.headers["Content-Length"])))
                count = len(read)
            self.close_connection = close_after_answer or bool(drop_every and count % drop_every == 0)
            if drop_every and count % drop_every == 0:
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            if say_close:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", read
    finally:
        httpd.shutdown()
        httpd.server_close()


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
