"""Slow clients for the tests: connections that send a request's head, then its body one byte at a time, and a
small backend that counts the requests it holds at once (what nginx lets through to a version).

    with Trickle(url, 256, every=2.0, until=20.0, headers={"X-Canary": "always"}) as slow:
        ...                       # the connections trickle in the background
    slow.cut                      # connection -> (seconds it lived, what nginx answered: a status, or None)
"""

from __future__ import annotations

import asyncio
import json
import selectors
import socket
import sys
import threading
import time
from urllib.parse import urlsplit


class Trickle:
    """`count` connections to `url` (from `source`, an address of this host): each sends a POST's head announcing
    `length` bytes of body, then one byte every `every` s until `until` s after it started, then nothing; each notes
    when nginx cut it (closed it, reset it or answered) and the status it answered, if any."""

    def __init__(
        self,
        url: str,
        count: int,
        every: float,
        until: float,
        headers: dict[str, str] | None = None,
        source: str | None = None,
        length: int = 100_000,
        path: str = "/predict",
        head_every: float | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.address = (parts.hostname, parts.port)
        self.count, self.every, self.until, self.source, self.length = count, every, until, source, length
        lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json"]
        lines += [f"Content-Length: {length}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self.head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.head_every = head_every  # the head itself one byte at a time, this often (a slow header)
        self.cut: dict[int, tuple[float, int | None]] = {}  # connection -> (seconds it lived, status answered)
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Trickle:
        self._thread.start()
        deadline = time.monotonic() + 30
        while self.opened < self.count and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_cut(self, timeout: float) -> None:
        """Until every connection was cut (at most `timeout` s)."""
        deadline = time.monotonic() + timeout
        while len(self.cut) < self.count and time.monotonic() < deadline:
            time.sleep(0.1)

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.source:
            sock.bind((self.source, 0))
        sock.connect(self.address)
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        socks: dict[int, socket.socket] = {}
        started: dict[int, float] = {}
        sent: dict[int, int] = {}
        for i in range(self.count):
            sock = self._connect()
            if self.head_every is None:
                sock.sendall(self.head)
                sent[i] = 0
            else:
                sent[i] = -len(self.head)  # negative: bytes of the head still to send
            socks[i], started[i] = sock, time.monotonic()
            selector.register(sock, selectors.EVENT_READ, i)
            self.opened += 1
        step = self.head_every if self.head_every is not None else self.every
        next_send = time.monotonic() + step
        try:
            while socks and not self._stop.is_set():
                for key, _ in selector.select(timeout=0.05):
                    self._close(key.data, socks, started, selector, self._status(socks[key.data]))
                now = time.monotonic()
                if now < next_send:
                    continue
                next_send = now + step
                for i in list(socks):
                    if now - started[i] > self.until:
                        continue  # stalled: nginx's time bounds are to cut it
                    byte = self.head[len(self.head) + sent[i]] if sent[i] < 0 else ord(" ")
                    try:
                        socks[i].send(bytes([byte]))
                        sent[i] += 1
                    except OSError:
                        self._close(i, socks, started, selector, None)
        finally:
            for i in list(socks):
                selector.unregister(socks[i])
                socks.pop(i).close()

    @staticmethod
    def _status(sock: socket.socket) -> int | None:
        """The status of what nginx sent before closing (None: it closed or reset without an answer)."""
        try:
            data = sock.recv(4096)
        except OSError:
            return None
        parts = data.split(b" ", 2)
        return int(parts[1]) if data.startswith(b"HTTP/") and len(parts) > 1 and parts[1].isdigit() else None

    def _close(self, i, socks, started, selector, status) -> None:
        if i not in socks:
            return
        self.cut[i] = (time.monotonic() - started[i], status)
        selector.unregister(socks[i])
        socks.pop(i).close()


class Held:
    """What one port of the counting backend holds: requests in progress now, the most at once, all it answered."""

    def __init__(self) -> None:
        self.now = self.most = self.answered = 0


async def _serve(ports: list[int], delay: float) -> None:
    """A backend on each of `ports` (one per slot) answering a POST after `delay` s (counted), a GET at once, and GET
    /held with what each port held (JSON: port -> now, most, answered)."""
    held = {port: Held() for port in ports}

    def handler(port: int):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            mine = held[port]
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    if length:
                        await reader.readexactly(length)
                    if head.startswith(b"GET /held "):
                        body = json.dumps({p: vars(h) for p, h in held.items()}).encode()
                    elif head.startswith(b"GET "):  # a health check, at once
                        body = b'{"status": "ok"}'
                    else:
                        mine.now += 1
                        mine.most = max(mine.most, mine.now)
                        await asyncio.sleep(delay)
                        mine.now -= 1
                        mine.answered += 1
                        body = b'{"predictions": ["Adelie"]}'
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(body), body)
                    )
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                pass
            finally:
                writer.close()

        return handle

    servers = [await asyncio.start_server(handler(port), "127.0.0.1", port, backlog=4096) for port in ports]
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main() -> None:
    """python tests/slow.py DELAY PORT...: the counting backend."""
    asyncio.run(_serve([int(p) for p in sys.argv[2:]], float(sys.argv[1])))


if __name__ == "__main__":
    main()
