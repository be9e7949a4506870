"""`canary dashboard`: both versions side by side, live, in a browser, with the actions of the CLI.

One poller thread reads the stack once a second, whatever the number of browsers: `scrape.snapshots` (one
/metrics read per backend) passed to `control.status` (what `canary status` shows: the split nginx applies, each
version's health and figures since the last change), `views.read_history` (what `canary history` shows) and the
running rollout's progress (live.py). It keeps 15 minutes of per-second samples in memory (requests/s, 5xx share,
p50/p99, mean confidence: `metrics.figures_between` of consecutive snapshots), draws the charts once per tick
(charts.py) and serves that one view to every page, which polls it every second.

Actions go through the CLI's own functions (`control.set_weight`: the change lock, compare-and-set against the
state the page showed, the change log; `live.request` for pause/abort) and answer with the CLI's one line.

Security, as it steers production traffic: it listens on 127.0.0.1 unless --host says otherwise (and then checks
the Host header against loopback names, against DNS rebinding); every action needs the token (printed at start,
or CANARY_DASHBOARD_TOKEN) in the X-Canary-Token header, is POST only with a JSON body, and is refused when the
request comes from another origin (Origin, Sec-Fetch-Site). Beyond loopback, reading needs the token too. Every
answer carries a strict Content-Security-Policy: the page's script is a file of its own, nothing inline.
"""

from __future__ import annotations

import getpass
import hmac
import ipaddress
import json
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from canary_kit.core.config import COLORS, environment
from canary_kit.core.errors import CanaryError
from canary_kit.core.routing import CHANGELOG
from canary_kit.core.target import Target
from canary_kit.dashboard import charts
from canary_kit.observe.metrics import Snapshot, figures_between
from canary_kit.observe.scrape import snapshots
from canary_kit.observe.views import change_line, clean, read_history, status_lines
from canary_kit.rollout import live
from canary_kit.steer.control import set_weight, status

TOKEN_HEADER = "X-Canary-Token"
TOKEN_VARIABLE = "CANARY_DASHBOARD_TOKEN"
KEEP_SECONDS = 900  # 15 minutes of per-second samples
HISTORY = 40  # changes listed below the charts
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
EVENTS = {"set-weight": None, "promote": 100, "rollback": 0}  # weight actions; pause/abort go to the rollout


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def get_token() -> str:
    """CANARY_DASHBOARD_TOKEN (at least 16 characters: config.Environment), or a fresh random one."""
    given = environment().dashboard_token
    return secrets.token_urlsafe(24) if given is None else given.get_secret_value()


class Poller:
    """The one reader of the stack: a tick per `interval` seconds, whatever the number of pages open."""

    def __init__(
        self,
        make_target: Callable[[], Target],
        state_dir: Path | None = None,
        interval: float = 1.0,
    ) -> None:
        self.make_target, self.state_dir, self.interval = make_target, state_dir, interval
        self.samples: deque[dict] = deque(maxlen=int(KEEP_SECONDS / interval))
        self.reads = 0  # snapshot rounds taken (each: one /metrics read per backend)
        self._previous: dict[str, Snapshot | None] | None = None
        self._view: dict[str, Any] = {"problem": "starting", "tick": 0}
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-poller", daemon=True)

    def start(self) -> Poller:
        """The first read before anything is served (a page opened at once has figures), then one per tick."""
        self._tick()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def view(self) -> dict:
        with self._lock:
            return self._view

    def _tick(self) -> None:
        try:
            self.poll()
        except Exception as exc:  # noqa: BLE001 - the page must say what broke, and the poller go on
            with self._lock:
                self._view = {**self._view, "problem": f"the dashboard could not read the stack: {exc!r}"}

    def _run(self) -> None:
        next_tick = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, next_tick - time.monotonic())):
            self._tick()
            next_tick = max(next_tick + self.interval, time.monotonic())

    def _reach(self) -> Target:
        target = self.make_target()  # the local stack reopened (cheap: tells at once when it stops); compose's kept
        self.state_dir = target.state_dir
        return target

    def poll(self) -> None:
        now, problem, report, warnings = time.time(), None, None, []
        sample: dict[str, Any] = {"t": time.time()}
        try:
            target = self._reach()
        except CanaryError as exc:
            problem, target, self._previous = str(exc), None, None
        if target is not None:
            snap = snapshots(target)
            self.reads += 1
            report = status(target, now=snap)
            report["rollout"] = live.read(target.state_dir)  # shouted while one stands half-way (views)
            warnings = status_lines(report)[1]
            if report["state_file"] is None and target.state_file.exists():
                warnings.append(
                    f"warning: the state file {target.state_file} is invalid: nginx sends everything to "
                    "blue; the next change writes a valid one"
                )
            regression = report.get("task") == "regression"
            distance = report["ks_distance"] if regression else report["class_divergence"]
            sample.update(weight=report["green_weight"], divergence=distance, task=report.get("task"))
            for color in COLORS:
                before = (self._previous or {}).get(color)
                per = figures_between(before, snap[color]) if before and snap[color] else None
                since = report["backends"][color]["since_change"] or {}
                # the model's figure: per tick from the service's metrics, else since the change from its answers
                model = since.get("value_mean") if regression else (per.confidence_mean if per else None)
                sample[color] = (
                    None
                    if per is None
                    else {
                        "rps": round(per.requests / per.seconds, 1) if per.seconds > 0 else None,
                        "error_rate": per.error_rate,
                        "p50_ms": per.p50_ms,
                        "p99_ms": per.p99_ms,
                        "confidence": model if model is not None else since.get("confidence_mean"),
                    }
                )
            self._previous = snap
        self.samples.append(sample)
        history = read_history(self.state_dir / CHANGELOG, HISTORY) if self.state_dir else []
        for entry in history:
            try:
                entry["unix"] = datetime.fromisoformat(entry["time"]).timestamp()
            except (KeyError, TypeError, ValueError):
                pass
        rollout = live.read(self.state_dir) if self.state_dir else None
        drawn = charts.render(list(self.samples), history, rollout, now)
        with self._lock:
            tick = self._view.get("tick", 0) + 1
            self._view = {
                "tick": tick,
                "time": now,
                "problem": problem,
                "warnings": warnings,
                "status": report,
                "latest": sample,
                "history": history[::-1],
                "rollout": rollout,
                "charts": drawn,
            }


class Guard:
    """Who may read and act: the Host (on loopback), the Origin, the token."""

    def __init__(self, token: str, host: str) -> None:
        self.token, self.loopback = token, is_loopback(host)

    def host_refusal(self, request: Request) -> str | None:
        name = urlsplit("//" + request.headers.get("host", "")).hostname or ""
        if self.loopback and not is_loopback(name):
            return f"refused: Host {request.headers.get('host', '')!r} is not this machine's loopback address"
        return None

    def origin_refusal(self, request: Request) -> str | None:
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin is not None and origin != own:
            return f"refused: a request from another origin ({origin}); actions come from this page only"
        if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return "refused: a cross-site request; actions come from this page only"
        return None

    def token_refusal(self, request: Request) -> tuple[int, str] | None:
        given = request.headers.get(TOKEN_HEADER)
        if not given:
            return 401, (
                f"this needs the dashboard's token in the {TOKEN_HEADER} header: the one `canary dashboard` "
                f"printed, or {TOKEN_VARIABLE}"
            )
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return 403, "wrong token: use the one `canary dashboard` printed (or CANARY_DASHBOARD_TOKEN)"
        return None


def refuse(code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=code)


class SecurityHeaders:
    """Every answer (also Starlette's own 404 and 405) gets the CSP and its companions."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in HEADERS.items() if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def create_app(poller: Poller, make_target: Callable, token: str, host: str = "127.0.0.1"):
    guard = Guard(token, host)
    folder = resources.files("canary_kit.dashboard") / "static"
    page = (folder / "dashboard.html").read_bytes()
    static = {name: ((folder / name).read_bytes(), kind) for name, kind in STATIC.items()}

    async def index(request: Request) -> Response:
        if refusal := guard.host_refusal(request):
            return refuse(403, refusal)
        return Response(page, media_type="text/html; charset=utf-8")

    async def asset(request: Request) -> Response:
        found = static.get(request.path_params["name"])
        if found is None:
            return refuse(404, "no such file")
        return Response(found[0], media_type=f"{found[1]}; charset=utf-8")

    async def state(request: Request) -> Response:
        if refusal := guard.host_refusal(request):
            return refuse(403, refusal)
        if not guard.loopback and (denied := guard.token_refusal(request)):
            return refuse(*denied)
        return Response(json.dumps(poller.view(), default=str), media_type="application/json")

    async def act(request: Request) -> Response:
        action = request.path_params["action"]
        if action not in (*EVENTS, *live.ACTIONS):
            return refuse(404, f"no action {action!r}")
        if request.method != "POST":
            return refuse(405, "actions are POST only")
        for refusal in (guard.host_refusal(request), guard.origin_refusal(request)):
            if refusal:
                return refuse(403, refusal)
        if denied := guard.token_refusal(request):
            return refuse(*denied)
        if not request.headers.get("content-type", "").startswith("application/json"):
            return refuse(415, "actions take a JSON body (Content-Type: application/json)")
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return refuse(400, "the body must be a JSON object")
        try:
            answer = await run_in_threadpool(perform, make_target, action, body)
        except CanaryError as exc:
            return refuse(409, str(exc))
        return JSONResponse(answer)

    routes = [
        Route("/", index),
        Route("/static/{name}", asset),
        Route("/api/state", state),
        Route("/api/{action}", act, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    return SecurityHeaders(Starlette(routes=routes))


def perform(make_target: Callable, action: str, body: dict) -> dict:
    """One action, through the CLI's functions; CanaryError carries the CLI's one-line refusal."""
    given = clean(" ".join(str(body.get("reason") or "").split())[:300])  # no control character reaches a log
    reason = f"{given} (dashboard)" if given else "dashboard"
    target = make_target()
    if action in live.ACTIONS:
        by = f"the dashboard ({environment().user or getpass.getuser()})"
        return {"message": live.request(target.state_dir, action, by=by, reason=given)}
    weight: Any = body.get("weight") if EVENTS[action] is None else EVENTS[action]  # set_weight checks it
    serial = body.get("serial")
    if serial is not None and (not isinstance(serial, int) or isinstance(serial, bool)):
        raise CanaryError(f"serial must be a whole number, got {serial!r}")
    # compare-and-set against the state the page showed, except for a rollback: always allowed, as on the CLI
    before, after = set_weight(target, weight, reason, expect=None if action == "rollback" else serial, event=action)
    return {"message": change_line(before, after), "green_weight": after.green_weight, "serial": after.serial}


def serve(
    make_target: Callable[[], Target],
    state_dir: Path | None,
    host: str,
    port: int,
    echo: Callable[[str], None],
) -> None:
    """Run the dashboard until Ctrl-C."""
    import uvicorn

    token, given = get_token(), environment().dashboard_token is not None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CanaryError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another with --port") from None
    poller = Poller(make_target, state_dir).start()
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    echo(f"canary dashboard: {url}" + ("   (token from CANARY_DASHBOARD_TOKEN)" if given else f"#token={token}"))
    if not is_loopback(host):
        echo(
            "warning: listening beyond this machine: reading needs the token too, and the connection is plain HTTP "
            "(put TLS or an SSH tunnel in front)"
        )
    echo("Ctrl-C stops it")
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(poller, make_target, token, host),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
    )
    try:
        server.run()
    finally:
        poller.stop()
