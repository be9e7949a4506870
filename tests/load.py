"""A bounded load client for the tests: N worker threads POST /predict until a count or a time limit is reached.

Each worker keeps one keep-alive connection and never resends a request: a request that gets no HTTP answer
counts as failed, as it would for most API clients. Every answer is kept with the moment it was sent, so a test
can judge only the requests sent after a change. `keepalive=False` opens a new connection for every request
instead, and `check_version_field=True` also reads each 200 answer's body: its `model_version` must be the version
the `X-Model-Version` header names, or the answer counts as not ok (`not_ok()`).
"""

from __future__ import annotations

import http.client
import json
import math
import select
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from conftest import EXAMPLE_ROW


@dataclass
class Answer:
    sent: float
    status: int | None  # None: the request failed without an HTTP answer
    version: str | None
    route: str | None
    error: str = ""
    request_id: str | None = None
    row: int | None = None  # which of Load.rows (or Load.bodies) was sent
    body: object = None  # the 200 answer's JSON (with Load.keep_bodies)
    took: float | None = None  # seconds from sending to the whole answer


@dataclass
class Load:
    """Background load against `url`; stops by itself after `max_requests` or `max_seconds`."""

    url: str
    workers: int = 8
    max_requests: int = 5000
    max_seconds: float = 120.0
    rate: float | None = None  # requests per second from all workers together (None: as fast as answered)
    headers: dict[str, str] = field(default_factory=dict)
    rows: list[dict] | None = None  # one of these per request, in turn (default: the example row every time)
    path: str = "/predict"  # the endpoint the requests go to
    bodies: list[object] | None = None  # whole request bodies, in turn (another service's: instead of `rows`)
    timeout: float = 15.0  # seconds for one request
    keepalive: bool = True  # False: a new connection for every request (`Connection: close`)
    check_version_field: bool = False  # True: a 200 whose body's model_version differs from the header is not ok
    keep_bodies: bool = False  # True: each 200 answer's JSON is kept (Answer.body)
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock, self._stop, self._sent = threading.Lock(), threading.Event(), 0
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(self.workers)]
        # every body encoded once (not per request: the client's CPU is the stack's on this 2-core host)
        bodies = self.bodies or [{"instances": [row]} for row in self.rows or [EXAMPLE_ROW]]
        self._encoded = [
            json.dumps(b, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode() for b in bodies
        ]

    def _take(self) -> int | None:
        """The next request's number (None: the load is over). Numbers are handed out in turn across the workers,
        so any stretch of the load sends the rows evenly (the data's rows are grouped by class)."""
        with self._lock:
            if self._stop.is_set() or self._sent >= self.max_requests or time.monotonic() > self._deadline:
                return None
            number, slot = self._sent, None if self.rate is None else self._began + self._sent / self.rate
            self._sent += 1
        if slot is not None:  # paced: wait for this request's turn (a long wait ends early when the load stops)
            self._stop.wait(max(0.0, min(slot, self._deadline) - time.monotonic()))
        return None if self._stop.is_set() else number

    def _work(self) -> None:
        bodies = self._encoded
        url = urlsplit(self.url)
        headers = {"Content-Type": "application/json", "Accept": "*/*", **self.headers}
        if not self.keepalive:
            headers["Connection"] = "close"
        # one connection per worker, reused for every request (or none kept); no retries at any layer
        conn: http.client.HTTPConnection | None = None
        try:
            while (number := self._take()) is not None:
                sent, row = time.monotonic(), number % len(bodies)
                if conn is not None and _closed_by_peer(conn):  # an idle connection the server closed: a new one
                    conn.close()
                    conn = None
                if conn is None:
                    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=self.timeout)
                try:
                    conn.request("POST", self.path, body=bodies[row], headers=headers)
                    r = conn.getresponse()
                    content = r.read()
                    answer = Answer(
                        sent,
                        r.status,
                        r.getheader("x-model-version"),
                        r.getheader("x-canary-route"),
                        request_id=r.getheader("x-request-id"),
                        row=row,
                        took=time.monotonic() - sent,
                    )
                    if self.keep_bodies and r.status == 200:
                        answer.body = json.loads(content)
                    if self.check_version_field and r.status == 200:
                        answer.error = _version_field_problem(content, answer.version)
                    if r.will_close or not self.keepalive:
                        conn.close()
                        conn = None
                except Exception as exc:  # no answer, or one that cannot be read: failed, never lost, never resent
                    answer = Answer(sent, None, None, None, repr(exc))
                    conn.close()
                    conn = None
                with self._lock:
                    self.answers.append(answer)
        finally:
            if conn is not None:
                conn.close()

    def __enter__(self) -> Load:
        self._began = time.monotonic()
        self._deadline = self._began + self.max_seconds
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def run(self) -> Load:
        """Send the whole load and wait until it is done (or its time is up)."""
        with self:
            for thread in self._threads:
                thread.join(timeout=self.max_seconds + 30)
        return self

    def failed(self) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.status is None or a.status >= 500]

    def not_ok(self) -> list[Answer]:
        """Every answer that is not a clean 200: no answer, any other status, or a failed body check."""
        with self._lock:
            return [a for a in self.answers if a.status != 200 or a.error]

    def since(self, moment: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.sent >= moment]

    def wait_for(self, moment: float, count: int, timeout: float = 60.0) -> list[Answer]:
        """Block until `count` answers sent after `moment` are in (bounded by `timeout`)."""
        deadline = time.monotonic() + timeout
        while len(self.since(moment)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.since(moment)[:count]


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle keep-alive connection was closed by the server (readable before any request: EOF), checked
    before it is reused, as httpx's pool does; a request is never sent twice."""
    if conn.sock is None:
        return True
    poller = select.poll()  # not select.select: that refuses descriptors above 1023 (a test with many sockets)
    poller.register(conn.sock, select.POLLIN)
    return bool(poller.poll(0))


def _version_field_problem(content: bytes, header: str | None) -> str:
    """'' when the body's model_version is the header's version, else what is wrong."""
    try:
        field = json.loads(content)["model_version"]
    except (ValueError, KeyError, TypeError):
        return f"no model_version in body {content[:200]!r}"
    return "" if field == header else f"header says {header!r} but body says {field!r}"


def tally(answers: list[Answer]) -> Counter:
    return Counter(
        a.version if a.status == 200 and not a.error else f"failed:{a.status}:{a.error[:60]}" for a in answers
    )


def assert_split(green: int, total: int, weight: int, sigmas: float = 4.5) -> None:
    """Green's count fits a binomial(total, weight%) within `sigmas` standard deviations (exact at 0 and 100)."""
    p = weight / 100
    if p in (0.0, 1.0):
        assert green == p * total, f"weight {weight}%: green answered {green} of {total}"
        return
    mean, sd = total * p, math.sqrt(total * p * (1 - p))
    low, high = mean - sigmas * sd, mean + sigmas * sd
    assert low <= green <= high, f"weight {weight}%: green {green} of {total}, expected {low:.0f}..{high:.0f}"
