"""All settings of the canary stack in one typed object: the `[tool.canary]` table of the project's pyproject.toml,
overridden by CANARY_* variables, overridden by command-line options. Bad values are refused.

    [tool.canary]                          # what to ship: the tool knows a service only through these
    service_name = "fraud_scorer"          # its Bentos (and images) are fraud_scorer:VERSION
    task = "classification"                # or "regression"
    blue_version = "v1.0.0"
    green_version = "v1.1.0"

    [tool.canary.endpoints."/predict"]     # a prediction endpoint, and where its answers hold the predictions
    predictions = "$.predictions[*]"

    CANARY_PORT=9000 canary up             # the same as: canary up --port 9000
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PyprojectTomlConfigSettingsSource, SettingsConfigDict

from canary_kit.core import jsonpath
from canary_kit.core.endpoints import PredictionMetrics
from canary_kit.core.errors import CanaryError
from canary_kit.core.retention import Retention

Port = int
COLORS = ("blue", "green")
SLOTS = ("blue", "green_a", "green_b")  # where a version runs: blue's place, and two for green (see stacks/local.py)
# A version as BentoML accepts it in a tag (lower case; `latest` names no fixed version): v1.2.0, 2oxwsnhr22k7max4.
VERSION = r"^[a-z0-9](?:[-._a-z0-9]{0,61}[a-z0-9])?$"
TASKS = ("classification", "regression")
NAME = r"^[a-z0-9][a-z0-9_.-]*$"
METRIC = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"  # a Prometheus metric name
HEADER = r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$"  # an HTTP header's name
COOKIE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"  # a cookie's name
STATE_DIR = Path(".canary")  # the local stack's state folder when none is named


def default_bentoml_home() -> Path:
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")


class Endpoint(BaseModel):
    """One prediction endpoint: where its answers hold each row's prediction (and, for a classifier, its
    confidence), read by nginx as the answers pass; and a request body to check it with before the stack serves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    predictions: str | None = Field(None, description="JSON path of each row's prediction, e.g. $.predictions[*]")
    confidence: str | None = Field(
        None, description="JSON path of each row's probabilities (an object or list: its largest) or top probability"
    )
    example: str | None = Field(None, description="a request body (JSON text) this endpoint answers")

    @field_validator("predictions", "confidence")
    @classmethod
    def _path(cls, text: str | None) -> str | None:
        if text is not None:
            jsonpath.parse(text)  # a PathError (a ValueError) names what is wrong
        return text

    @field_validator("example")
    @classmethod
    def _json(cls, text: str | None) -> str | None:
        import json

        if text is not None:
            try:
                json.loads(text)
            except ValueError as exc:
                raise ValueError(f"example must be a JSON request body: {exc}") from None
        return text

    def path(self, which: str) -> jsonpath.JsonPath | None:
        """The parsed `predictions` or `confidence` path (None: not set)."""
        text = getattr(self, which)
        return None if text is None else jsonpath.parse(text)


class Settings(BaseSettings):
    """What is shipped, where the stack runs, and how traffic is split at the first start."""

    model_config = SettingsConfigDict(
        env_prefix="CANARY_", extra="forbid", validate_assignment=True, pyproject_toml_table_header=("tool", "canary")
    )

    # What is shipped: a BentoML service, one Bento (and image) per version.
    service_name: str = Field(pattern=NAME, description="the BentoML service; Bentos and images are NAME:VERSION")
    task: Literal["classification", "regression"] = Field(
        "classification", description="what the model predicts: a class per row, or a number per row"
    )
    endpoints: dict[str, Endpoint] = Field(
        default_factory=lambda: {"/predict": Endpoint()},
        min_length=1,
        description="the service's prediction endpoints: their requests, errors and latency make a version's figures",
    )
    source: Literal["bento", "code"] = Field(
        "bento", description="bento: serve each version's Bento (NAME:VERSION); code: the service's code with --arg"
    )
    service: str = Field(".", description="source code: what `bentoml serve` runs, a bentofile folder or module:Class")
    version_arg: str = Field("model_version", pattern=r"^\w+$", description="source code: the --arg naming the version")
    model_name: str | None = Field(
        None, pattern=NAME, description="source code: the model in the store whose versions the service serves"
    )
    # Prediction metrics the service exports itself on /metrics (the way on Kubernetes, where nothing reads bodies).
    class_metric: str | None = Field(
        None, pattern=METRIC, description="the service's counter of rows per predicted class (label `class`)"
    )
    confidence_metric: str | None = Field(
        None, pattern=METRIC, description="the service's histogram of each row's top-class probability"
    )
    value_metric: str | None = Field(
        None, pattern=METRIC, description="a regressor's histogram of its predicted values"
    )
    blue_version: str = Field(pattern=VERSION, description="the stable version at the first start")
    green_version: str = Field(pattern=VERSION, description="the candidate version at the first start")

    # Where the local stack runs.
    project_dir: Path = Field(default_factory=Path.cwd, description="folder holding the service and nginx/")
    state_dir: Path = Field(STATE_DIR, description="routing state, rendered nginx config, logs, pid files")
    host: str = Field("127.0.0.1", description="address nginx listens on")
    port: Port = Field(8000, ge=1, le=65535, description="nginx's public port")
    blue_port: Port = Field(3001, ge=1, le=65535, description="blue's loopback port")
    green_port: Port = Field(3002, ge=1, le=65535, description="green's loopback port (slot a)")
    green_port_b: Port = Field(3003, ge=1, le=65535, description="green's second port: the next version starts here")
    green_weight: int | None = Field(
        None, ge=0, le=100, description="green's percent at start [default: the last split, or 10 at the first start]"
    )
    workers: int = Field(1, ge=1, le=16, description="BentoML worker processes per version")
    max_inflight: int = Field(
        128,
        ge=1,
        le=10000,
        description="requests in flight per version, counted once a body is read; nginx answers more with a fast 503",
    )
    # Per client address, before any version's share (nginx): more get a fast 429 with Retry-After.
    client_connections: int = Field(
        64, ge=1, le=65535, description="requests in progress per client address, bodies being read included"
    )
    client_rate: int = Field(200, ge=1, le=1_000_000, description="requests per second per client address")
    client_burst: int = Field(400, ge=0, le=1_000_000, description="requests above client_rate taken at once")
    trusted_clients: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="addresses or networks with no per-client limit: this host's own clients, a proxy in front",
    )
    header_timeout: float = Field(10.0, gt=0, le=600, description="seconds a client has to send a whole header")
    body_timeout: float = Field(10.0, gt=0, le=600, description="longest gap in seconds between two reads of a body")
    # Pins (ingress-nginx's canary-by-header and -cookie): off on the public port unless the operator turns them on.
    pins: bool = Field(
        False,
        description="honour the pin header and cookie, and sticky users, on the public port (never at a version's 0%)",
    )
    pin_header: str = Field("X-Canary", pattern=HEADER, description="the pin header: always (green) or never (blue)")
    pin_cookie: str = Field("canary", pattern=COOKIE, description="the pin cookie: always (green) or never (blue)")
    user_header: str = Field(
        "X-User-ID", pattern=HEADER, description="with pins on, requests with this header keep one version per id"
    )
    # Logs (logs/ in the state folder): rotated by `canary up` once past log_max_bytes, log_keep rotated files kept.
    log_max_bytes: int = Field(100 * 2**20, ge=2**16, le=2**40, description="a log past this size is rotated")
    log_keep: int = Field(5, ge=1, le=100, description="rotated files kept per log (access.log.1 is the newest)")
    bentoml_home: Path = Field(default_factory=default_bentoml_home)
    nginx_bin: str = "nginx"
    worker_user: str | None = Field(
        None,
        pattern=r"^[a-z_][a-z0-9_-]*[$]?$",
        description="who nginx's workers run as when the stack runs as root [default: www-data, nginx or http]",
    )
    ready_timeout: float = Field(60.0, gt=0, le=600, description="seconds a version has to become ready")
    ledger_days: float = Field(30.0, gt=0, le=3650, description="days of answers the ledger keeps for labels")
    ledger_rows: int = Field(5_000_000, ge=1000, le=1_000_000_000, description="answers (rows) the ledger keeps")
    # Supervision (supervise.py): a process that dies is restarted at once, then after restart_delay, doubling up to
    # restart_delay_max while it keeps dying within stable_seconds of its start; past restart_limit such deaths in
    # a row it is left stopped (and `canary status` says so).
    restart_delay: float = Field(1.0, gt=0, le=60, description="seconds before the second restart in a row")
    restart_delay_max: float = Field(30.0, gt=0, le=600, description="longest wait between restarts")
    restart_limit: int = Field(10, ge=1, le=1000, description="deaths in a row before a process is left stopped")
    stable_seconds: float = Field(30.0, gt=0, le=3600, description="running this long ends a series of deaths")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return init_settings, env_settings, PyprojectTomlConfigSettingsSource(settings_cls)

    @field_validator("project_dir", "state_dir", "bentoml_home")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        return path.expanduser().absolute()

    @field_validator("worker_user")
    @classmethod
    def _unprivileged(cls, user: str | None) -> str | None:
        if user == "root":
            raise ValueError("nginx's workers must not run as root: name an unprivileged user, e.g. www-data")
        return user

    @field_validator("trusted_clients")
    @classmethod
    def _networks(cls, found: list[str]) -> list[str]:
        bad = []
        for text in found:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                bad.append(text)
        if bad:
            raise ValueError(f"trusted_clients must be IP addresses or networks such as 10.0.0.0/8, not {bad}")
        return [str(ipaddress.ip_network(text, strict=False)) for text in found]

    @field_validator("blue_version", "green_version")
    @classmethod
    def _fixed(cls, version: str) -> str:
        if version == "latest":
            raise ValueError("`latest` names no fixed version: name the version itself (bentoml list shows them)")
        return version

    @field_validator("endpoints", mode="before")
    @classmethod
    def _endpoint_table(cls, endpoints: object) -> object:
        """A list of paths (nothing observed), or a table of path -> JSON path of the predictions, or -> a table."""
        if isinstance(endpoints, (list, tuple)):
            return {path: {} for path in endpoints}
        if isinstance(endpoints, dict):
            return {
                path: {"predictions": e} if isinstance(e, str) else {} if e is None else e
                for path, e in endpoints.items()
            }
        return endpoints

    @field_validator("endpoints")
    @classmethod
    def _paths(cls, endpoints: dict[str, Endpoint]) -> dict[str, Endpoint]:
        bad = [e for e in endpoints if not re.fullmatch(r"/[A-Za-z0-9_./-]*", e) or "//" in e or "/../" in e + "/"]
        if bad:
            raise ValueError(f"endpoints must be URL paths like /predict (letters, digits, _ . - /), not {bad}")
        return endpoints

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        ports = (self.port, self.blue_port, self.green_port, self.green_port_b)
        if len(set(ports)) != len(ports):
            raise ValueError(f"port, blue_port, green_port and green_port_b must differ, got {ports}")
        return self

    def slot_port(self, slot: str) -> int:
        return {"blue": self.blue_port, "green_a": self.green_port, "green_b": self.green_port_b}[slot]

    def slot_url(self, slot: str) -> str:
        return f"http://127.0.0.1:{self.slot_port(slot)}"

    def bento_tag(self, version: str) -> str:
        return f"{self.service_name}:{version}"

    def model_tag(self, version: str) -> str:
        return f"{self.model_name}:{version}"

    @property
    def observed(self) -> bool:
        """Whether nginx reads predictions from the answers (an endpoint names where they are)."""
        return any(e.predictions for e in self.endpoints.values())

    @property
    def retention(self) -> Retention:
        return Retention(self.ledger_days, self.ledger_rows)

    @property
    def prediction_metrics(self) -> PredictionMetrics:
        return PredictionMetrics(
            self.class_metric,
            self.confidence_metric,
            tuple(self.endpoints),
            self.value_metric,
            self.task,
            self.observed,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Environment(BaseSettings):
    """What a command reads of its CANARY_* variables whatever the project: which local stack, how compose is run,
    who acts, the dashboard's token. Apart from Settings, and from the environment only: `canary down`, `status`,
    `history` or `dashboard` act on a state folder with no `[tool.canary]` table to read, and a person's name or a
    secret has no place in the project's pyproject.toml. `environment()` reads it, refusing a bad value."""

    model_config = SettingsConfigDict(env_prefix="CANARY_", extra="ignore", frozen=True)

    state_dir: Path = Field(STATE_DIR, description="the local stack's state folder, where --state-dir names none")
    compose_cmd: str | None = Field(
        None, description="how compose is run, e.g. `docker compose` [default: v2 where it answers, else v1]"
    )
    user: str | None = Field(None, description="who acts, as the change log says [default: the login name]")
    dashboard_token: SecretStr | None = Field(
        None, description="the dashboard's token, at least 16 characters [default: a fresh random one each start]"
    )

    @field_validator("compose_cmd", "user", mode="before")
    @classmethod
    def _unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value  # VAR= reads as unset

    @field_validator("dashboard_token")
    @classmethod
    def _long(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < 16:
            raise ValueError("must have at least 16 characters")
        return token


def environment() -> Environment:
    """The CANARY_* variables of Environment as they are now; a bad one refused in one line naming it."""
    try:
        return Environment()
    except ValidationError as exc:
        raise CanaryError(
            "; ".join(
                f"CANARY_{str(e['loc'][0]).upper()}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
            )
        ) from None
