"""What the kit knows of a service's interface, by name: its prediction endpoints (the model's API paths, whose
requests make a version's figures) and the metrics it exports on /metrics (BentoML's own request counter and
latency histogram; the model's prediction metrics that `[tool.canary]` names). The settings, the target interface,
the access-log readers, the scrape and the Kubernetes gates all read them here."""

from __future__ import annotations

from dataclasses import dataclass

REQUESTS = "bentoml_service_request"  # counter family: bentoml_service_request_total
DURATION = "bentoml_service_request_duration_seconds"  # histogram family
ENDPOINT = "/predict"  # the model's endpoint when `[tool.canary]` names none (setting `endpoints`)


def is_endpoint(uri: str, endpoints: tuple[str, ...] = (ENDPOINT,)) -> bool:
    """Whether a request's URI (query and all, as nginx logs it) asks one of the model's endpoints."""
    return uri.split("?", 1)[0] in endpoints


def asks_endpoint(entry: dict, endpoints: tuple[str, ...] = (ENDPOINT,)) -> bool:
    """Whether an access-log entry answers one of the model's endpoints: by nginx's decoded path (`path`, so
    /%70redict is /predict), or by the raw URI where an older log has no `path`."""
    path = entry.get("path")
    if isinstance(path, str) and path:
        return path in endpoints
    return is_endpoint(str(entry.get("uri", "")), endpoints)


@dataclass(frozen=True)
class PredictionMetrics:
    """The names of the service's prediction metrics: a counter of rows per predicted class (label `class`) and a
    histogram of each row's top-class probability. None: the service exports none (no quality figures).
    `endpoints`: the model's API paths; their requests, errors and latency are summed into one version's figures."""

    class_metric: str | None = None
    confidence_metric: str | None = None
    endpoints: tuple[str, ...] = (ENDPOINT,)
    value_metric: str | None = None  # a regressor's histogram of predicted values
    task: str = "classification"  # or "regression"
    observed: bool = False  # nginx reads each answer's predictions (the endpoints' JSON paths)
