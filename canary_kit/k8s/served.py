"""What the Kubernetes base is made from, and the names its parts share: the model as served on the cluster
(ServedModel, from `[tool.canary]`), the analysis args, the pod-hash label and the routing plugin that the Rollout
(manifests.py), its gates (analysis.py) and their checks (checks.py) all name, and how a number or a duration is
written in them.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from canary_kit.core.config import METRIC, Settings
from canary_kit.core.endpoints import ENDPOINT

PLUGIN = "argoproj-labs/gatewayAPI"
HASH_LABEL = "rollouts_pod_template_hash"  # Prometheus' name for the pod label Argo puts on each ReplicaSet's pods
# Labels the scrape adds to BentoML's own (the AnalysisTemplate selects pods by them): see README, Kubernetes.
SCRAPE_LABELS = ("namespace", HASH_LABEL)
ARGS = {
    "canary": "canary-hash",
    "stable": "stable-hash",
    "namespace": "namespace",
    "window": "window",
    "weight": "weight",
}
# Whole-string patterns (re.fullmatch): a Kubernetes object name (RFC 1123 subdomain, at most 253 characters), a
# Service name (RFC 1035 label, at most 63), and the Prometheus address the analysis runs its queries against.
DNS_NAME = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
DNS_LABEL = r"[a-z]([-a-z0-9]*[a-z0-9])?"
HTTP_URL = r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/\S*)?"


def is_name(value: object) -> bool:
    """A valid Kubernetes object name."""
    return isinstance(value, str) and len(value) <= 253 and re.fullmatch(DNS_NAME, value) is not None


def is_service_name(value: object) -> bool:
    """A valid Kubernetes Service name (stricter than other objects')."""
    return isinstance(value, str) and len(value) <= 63 and re.fullmatch(DNS_LABEL, value) is not None


def is_http_url(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(HTTP_URL, value) is not None


# What the fields of ServedModel that name things on the cluster must be: field -> (check, what it must be).
FIELD_CHECKS = {
    "gateway": (is_name, "a Kubernetes name (lowercase letters, digits, '-' and '.')"),
    "prometheus": (is_http_url, "an http(s) URL, e.g. http://prometheus.monitoring.svc:9090"),
}


class ServedModel(BaseModel):
    """What the tool knows of the model on Kubernetes: its BentoML service, its image and where things are."""

    model_config = ConfigDict(extra="forbid")

    service_name: str = Field(description="the BentoML service (`service_name` metric label)")
    image: str = Field(description="image repository, as `bentoml containerize` names it")
    image_tag: str = Field(pattern=r"^[\w][\w.-]{0,127}$", description="tag of the version being shipped")
    port: int = Field(3000, ge=1, le=65535, description="the port `bentoml serve` listens on in the image")
    endpoint: str = Field(ENDPOINT, description="the model's API endpoint that the gates judge")
    class_metric: str | None = Field(
        None, pattern=METRIC, description="the service's counter of rows per predicted class (None: no such gate)"
    )
    confidence_metric: str | None = Field(
        None, pattern=METRIC, description="the service's histogram of each row's top-class probability (None: no gate)"
    )
    value_metric: str | None = Field(
        None, pattern=METRIC, description="a regressor's histogram of its predicted values (None: no gate)"
    )
    task: str = Field("classification", pattern="^(classification|regression)$", description="the model's task")
    replicas: int = Field(2, ge=1, le=100)
    gateway: str = Field("gateway", description="the Gateway the routes attach to (same namespace)")
    prometheus: str = Field("http://prometheus.monitoring.svc:9090", description="Prometheus as Argo reaches it")
    run_as_user: int = Field(1034, description="the non-root uid of BentoML's images")

    @model_validator(mode="after")
    def _service_names(self) -> ServedModel:
        if not is_service_name(self.canary):
            raise ValueError(
                f"service_name {self.service_name!r} makes Service names like {self.canary!r}, which Kubernetes refuses"
                " (lowercase letters, digits and '-', at most 63 characters)"
            )
        return self

    @field_validator("gateway", "prometheus")
    @classmethod
    def _checked(cls, value: str, info: ValidationInfo) -> str:
        check, problem = FIELD_CHECKS[str(info.field_name)]
        if not check(value):
            raise ValueError(f"{value!r} is not {problem}")
        return value

    @classmethod
    def from_settings(cls, settings: Settings, **given) -> ServedModel:
        """The service and the version being shipped from the project's settings ([tool.canary]); `given` wins."""
        known = {
            "service_name": settings.service_name,
            "image": settings.service_name,
            "image_tag": settings.green_version,
            "class_metric": settings.class_metric,
            "confidence_metric": settings.confidence_metric,
            "value_metric": settings.value_metric,
            "task": settings.task,
        }
        return cls(**{**known, **{k: v for k, v in given.items() if v is not None}})

    @property
    def app(self) -> str:
        return self.service_name.replace("_", "-")

    @property
    def stable(self) -> str:
        return f"{self.app}-stable"

    @property
    def canary(self) -> str:
        return f"{self.app}-canary"


def duration(seconds: float) -> str:
    """A hold as both Argo (Go) and Prometheus read it: whole seconds, else milliseconds."""
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{round(seconds * 1000)}ms"


def number(value: float) -> str:
    return f"{value:g}"
