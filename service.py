"""The penguin classifier as one BentoML service; which model version it serves is chosen at build/serve time.

    bentoml serve --arg model_version=v1.1.0          # or MODEL_VERSION=v1.1.0 bentoml serve
    bentoml build --version v1.1.0 --arg model_version=v1.1.0
"""

from __future__ import annotations

import os

# One OpenMP thread for the model (HistGradientBoosting predicts with OpenMP): the trees are tiny, a request's
# rows are few, and on a busy host a second spinning OpenMP thread per worker costs far more than it saves
# (bench/: v1.1.0 1-row predict ~10 ms -> 150 ms under load with 2 threads). Set before anything loads libgomp;
# an operator's own OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import gc  # noqa: E402
import re  # noqa: E402
from typing import Annotated  # noqa: E402

import bentoml  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from penguin.features import (  # noqa: E402
    EXAMPLE,
    FEATURES,
    MAX_BODY_BYTES,
    MAX_INSTANCES,
    MODEL_NAME,
    STABLE_VERSION,
    Penguin,
)


class Args(BaseModel):
    """Build/serve-time arguments: `--arg model_version=…` wins over $MODEL_VERSION, then the stable version."""

    model_version: str = Field(default_factory=lambda: os.environ.get("MODEL_VERSION") or STABLE_VERSION)


def model_tag(version: str) -> str:
    """The store tag for a version, refusing (with the versions that exist) one the store does not hold."""
    found = sorted(str(m.tag.version) for m in bentoml.models.list(MODEL_NAME))
    if not re.fullmatch(r"v\d+\.\d+\.\d+", version) or version not in found:
        raise bentoml.exceptions.NotFound(
            f"model version {version!r} is not in the model store; versions found: {', '.join(found) or 'none'}"
            " (run `python train_model.py` or `bentoml models import models/*.bentomodel`)"
        )
    return f"{MODEL_NAME}:{version}"


ARGS = bentoml.use_arguments(Args)
MODEL_VERSION = ARGS.model_version
MODEL_TAG = model_tag(MODEL_VERSION)


class Prediction(BaseModel):
    predictions: list[str] = Field(description="Predicted species, one per instance")
    probabilities: list[dict[str, float]] = Field(description="Class probabilities, one mapping per instance")
    model_version: str = Field(description="The model version that answered", examples=[MODEL_VERSION])


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
    """ASGI middleware: POST bodies must be JSON (415) and at most `max_bytes` long (413), answered in JSON."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = dict(scope["headers"])
            media_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
            length = headers.get(b"content-length", b"0")
            if media_type != b"application/json":
                problem = (415, f"content type must be application/json, not {media_type.decode(errors='replace')}")
            elif not length.isdigit() or int(length) > self.max_bytes:
                problem = (413, f"request body larger than {self.max_bytes} bytes; send at most {MAX_INSTANCES} rows")
            else:
                return await self.app(scope, receive, send)
            response = JSONResponse({"error": problem[1]}, status_code=problem[0])
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


async def health(request: Request) -> JSONResponse:
    """GET /health: the original design's plain liveness check."""
    return JSONResponse({"status": "ok", "model_version": MODEL_VERSION})


async def metadata(request: Request) -> JSONResponse:
    """GET /metadata: the served model's tag, labels and training metadata from the model store."""
    info = bentoml.models.get(MODEL_TAG).info
    return JSONResponse(
        {"tag": MODEL_TAG, "model_version": MODEL_VERSION, "labels": info.labels, "metadata": info.metadata}
    )


routes = Starlette(routes=[Route("/health", health), Route("/metadata", metadata)])


@bentoml.asgi_app(routes, path="/")
@bentoml.service(
    name="penguin_classifier",
    traffic={"timeout": 10},
    labels={"model_version": MODEL_VERSION},
    # No per-request access log line from the worker (~8% of its CPU per single-row request, see bench/):
    # in the canary stack nginx already logs every request as JSON with the version that answered.
    logging={"access": {"enabled": False}},
)
class PenguinClassifier:
    """Classifies Palmer penguins into Adelie, Chinstrap or Gentoo."""

    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        # joblib/pandas/scikit-learn are imported here, in the worker that predicts, not at module level: the
        # `bentoml serve` supervisor also imports this module and never needs them (faster cold start).
        import joblib
        import pandas

        self.frame = pandas.DataFrame
        self.pipeline = joblib.load(self.model.path_of("model.joblib"))
        self.classes = [str(c) for c in self.pipeline.classes_]
        # One prediction before the worker reports ready: the first request does not pay scikit-learn's lazy setup.
        self.pipeline.predict_proba(self.frame({name: [EXAMPLE[name]] for name in FEATURES}))
        gc.freeze()  # the loaded model is long-lived: keep it out of the collector's way

    @bentoml.api
    def predict(
        self,
        instances: Annotated[list[Penguin], Field(min_length=1, max_length=MAX_INSTANCES, examples=[[EXAMPLE]])],
        ctx: bentoml.Context,
    ) -> Prediction:
        """Predict the species of one or more penguins, with class probabilities."""
        # Column by column: the same frame (names, order, dtypes) as from a list of row dicts, ~3x faster.
        frame = self.frame({name: [getattr(row, name) for row in instances] for name in FEATURES})
        proba = self.pipeline.predict_proba(frame)
        predictions = [self.classes[i] for i in proba.argmax(axis=1).tolist()]
        # For nginx's access log: shadow mode matches blue's and green's answers to the same request by this header.
        ctx.response.headers["X-Predictions"] = ",".join(predictions)
        # The fields are built from the model's own output, already of the declared types: no re-validation.
        return Prediction.model_construct(
            predictions=predictions,
            probabilities=[dict(zip(self.classes, p)) for p in proba.tolist()],
            model_version=MODEL_VERSION,
        )


# The first middleware added is the outermost: the version header also lands on the guard's refusals.
PenguinClassifier.add_asgi_middleware(VersionHeader, version=MODEL_VERSION)
PenguinClassifier.add_asgi_middleware(JsonBodyGuard, max_bytes=MAX_BODY_BYTES)
