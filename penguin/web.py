"""The service's HTTP edges: headers and guards around every request, the OpenAPI document, one-line logs.

- VersionHeader: every response says which model version answered.
- JsonBodyGuard: a POST body must be JSON (415) and at most `max_bytes` long (413), whether it declares its
  length or arrives chunked; answered in JSON and logged as one line.
- BadInputLog: BentoML logs a client's invalid body with a full traceback; this makes it one line.
- send_heads_with_bodies: the ASGI server writes a response's head together with its body, in one write.
- openapi_document: BentoML's document, made valid OpenAPI 3.1 (its schemas are JSON Schema 2020-12, which 3.0
  tools cannot read) and completed with /health, /metadata and the 413/415 answers.
"""

from __future__ import annotations

import logging
import weakref

from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

logger = logging.getLogger("bentoml.penguin_classifier")
BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"  # logs "Exception on /predict [POST]" with a traceback
OPENAPI_VERSION = "3.1.0"


class VersionHeader:
    """ASGI middleware: every response (errors and probes included) says which model version answered."""

    def __init__(self, app, version: str) -> None:
        self.app, self.header = app, (b"x-model-version", version.encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)


class JsonBodyGuard:
    """ASGI middleware: POST bodies must be JSON (415) and at most `max_bytes` long (413), answered in JSON.

    A body with a Content-Length is judged by it. A body without one (chunked) is read here, up to the limit, before
    the service sees any of it, then handed on whole.
    """

    def __init__(self, app, max_bytes: int, hint: str = "") -> None:
        self.app, self.max_bytes, self.hint = app, max_bytes, hint

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        media_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if media_type != b"application/json":
            detail = f"content type must be application/json, not {media_type.decode(errors='replace')}"
            return await self.refuse(scope, receive, send, 415, detail)
        too_large = f"request body larger than {self.max_bytes} bytes{self.hint}"
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await self.refuse(scope, receive, send, 413, too_large)
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self.refuse(scope, receive, send, 413, too_large)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay():
            nonlocal body
            if body is None:
                return await receive()  # after the body: wait for the disconnect, as the server would
            message, body = body, None
            return message

        await self.app(scope, replay, send)

    @staticmethod
    async def refuse(scope, receive, send, status: int, detail: str) -> None:
        logger.warning("bad request on %s [%s] (%d): %s", scope["path"], scope["method"], status, detail)
        await JSONResponse({"error": detail}, status_code=status)(scope, receive, send)


class HeldHead:
    """A response's transport that keeps the head's bytes back and writes them with the first body bytes."""

    def __init__(self, transport, complete) -> None:
        self.transport, self.complete, self.head = transport, complete, None
        self.released = False

    def write(self, data: bytes) -> None:
        if self.released:
            return self.transport.write(data)
        if self.head is None:
            self.head = bytes(data)
        elif data:  # an empty part (a stream's first chunk may be) has nothing to carry the head with
            self.released = True
            self.transport.write(self.head + bytes(data))
        return None

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))

    def flush(self) -> None:
        """Write a head still held: the response is complete without body bytes (HEAD, 204, an empty body)."""
        if self.head is not None and not self.released:
            self.released = True
            self.transport.write(self.head)

    def close(self) -> None:
        if self.complete():  # closed after a whole response (no keep-alive): send it; after a failure: nothing
            self.flush()
        self.transport.close()

    def __getattr__(self, name: str):
        return getattr(self.transport, name)  # is_closing, get_extra_info, ...: the connection's own


WRAPPED: list[str] = []  # the uvicorn protocol modules whose cycles send_heads_with_bodies wrapped in this process


def heads_with_bodies() -> bool:
    """Whether send_heads_with_bodies found uvicorn's cycles to wrap (what /metadata reports)."""
    return bool(WRAPPED)


def _wrappable(cycle) -> bool:
    """A RequestResponseCycle of the layout the wrapper was written for: it keeps `transport` and
    `response_started` on itself, and has an async `send`."""
    names = getattr(getattr(cycle.__init__, "__code__", None), "co_names", ())
    return {"transport", "response_started", "response_complete"} <= set(names) and callable(
        getattr(cycle, "send", None)
    )


def send_heads_with_bodies() -> list[str]:
    """Make uvicorn write each response's head in the same write as its body (or its first body part).

    uvicorn writes the head as soon as the app starts the response, and the body after the framework's outer layers
    (metrics, timeout) have run: on a busy host, tens of microseconds to milliseconds later. A worker killed in that
    gap leaves nginx holding a head it has begun to forward: it can no longer fail over, and the client gets a cut
    answer. Written together, an answer reaches nginx whole or not at all, and "not at all" fails over to the other
    version. A response that never sends a body after its head is closed without one (nginx fails it over too).
    Any cycle not of the expected shape (no `transport`, no `response_started`) is left as it is. Returns the modules
    whose cycles it wrapped; when none, it logs an error (and /metadata says `heads_with_bodies: false`).
    """
    import importlib

    for name in ("uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.http.h11_impl"):
        try:
            cycle = importlib.import_module(name).RequestResponseCycle
        except (ImportError, AttributeError):  # httptools not installed, or another uvicorn layout
            continue
        if not _wrappable(cycle):
            continue
        if not getattr(cycle.send, "heads_with_bodies", False):
            cycle.send = _holding_the_head(cycle.send)
        if name not in WRAPPED:
            WRAPPED.append(name)
    if not WRAPPED:
        logger.error(
            "send_heads_with_bodies found no uvicorn RequestResponseCycle of the expected layout to wrap: responses "
            "leave in two writes, and a worker killed mid-answer can cut one nginx cannot fail over. Serve with the "
            "uvicorn pinned in requirements/service.txt."
        )
    return WRAPPED


def _holding_the_head(send):
    async def send_holding_the_head(self, message) -> None:
        if (
            message.get("type") == "http.response.start"
            and getattr(self, "response_started", True) is False
            and not isinstance(getattr(self, "transport", None), (HeldHead, type(None)))
        ):
            cycle = weakref.ref(self)  # no reference cycle: the request's state is freed as soon as it is done
            self.transport = HeldHead(self.transport, lambda: getattr(cycle(), "response_complete", False))
        await send(self, message)
        if getattr(self, "response_complete", False) and isinstance(self.transport, HeldHead):
            self.transport.flush()  # the response is done: a head still held goes out now

    send_holding_the_head.heads_with_bodies = True
    return send_holding_the_head


def describe(exc: BaseException, limit: int = 3) -> str:
    """A validation error in one line: `instances.0.island: Input should be ...; ...` (never the input values).
    Each error is written as the canary tool writes a bad setting (`location: message`, pydantic's own message
    without its "Value error, " prefix): tests/test_config.py holds the two to that."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    found = errors(include_url=False, include_input=False)
    parts = [
        f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg'].removeprefix('Value error, ')}" for e in found[:limit]
    ]
    more = f"; and {len(found) - limit} more" if len(found) > limit else ""
    return f"{len(found)} validation error(s): " + "; ".join(parts) + more


class BadInputLog(logging.Filter):
    """BentoML's "Exception on /predict [POST]" + traceback, for a client's mistake (4xx), as one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from bentoml.exceptions import BentoMLException
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        client_error = isinstance(exc, ValidationError) or (
            isinstance(exc, BentoMLException) and int(exc.error_code) < 500
        )
        if client_error:
            status = 400 if isinstance(exc, ValidationError) else int(exc.error_code)
            where = record.getMessage().removeprefix("Exception on ")
            record.msg, record.args = "bad request on %s (%d): %s", (where, status, describe(exc))
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install_bad_input_log() -> None:
    target = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, BadInputLog) for f in target.filters):
        target.addFilter(BadInputLog())


class Error(BaseModel):
    """The service's own refusals (413, 415)."""

    error: str = Field(description="What is wrong with the request")


def add_schema(schemas: dict, model: type[BaseModel]) -> dict:
    """Put a pydantic model's JSON schema (and the models it nests) under components/schemas; return its $ref."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def openapi_document(spec: dict, version: str, extra_paths: dict[str, tuple[str, object]]) -> dict:
    """BentoML's spec as valid OpenAPI 3.1, titled with the model version, with our GET routes and 413/415 answers.

    `extra_paths`: path -> (description, pydantic model of the JSON answer).
    """
    doc = {**spec, "openapi": OPENAPI_VERSION}
    doc["info"] = {**spec.get("info", {}), "version": version}
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    error = {"content": {"application/json": {"schema": add_schema(schemas, Error)}}}
    paths = dict(doc.get("paths", {}))
    for path, (description, model) in extra_paths.items():
        answer = add_schema(schemas, model)
        paths[path] = {
            "get": {
                "description": description,
                "tags": ["Infrastructure"],
                "operationId": path.strip("/").replace("/", "_") or "root",
                "responses": {
                    "200": {"description": "Successful Response", "content": {"application/json": {"schema": answer}}}
                },
            }
        }
    for item in paths.values():
        post = item.get("post")
        if post is not None:
            post.setdefault("responses", {}).update(
                {
                    "413": {"description": "Request body too large", **error},
                    "415": {"description": "Content type is not application/json", **error},
                }
            )
    doc["paths"] = paths
    return doc
