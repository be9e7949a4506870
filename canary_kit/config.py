"""All settings of the canary stack in one typed object; every field can come from a CANARY_* variable.

    CANARY_PORT=9000 canary up       # the same as: canary up --port 9000
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from penguin.features import CANDIDATE_VERSION, MODEL_NAME, STABLE_VERSION

Port = int
COLORS = ("blue", "green")


class CanaryError(Exception):
    """A problem the user can fix; the CLI prints it as one line and exits 1."""


def describe(exc: ValidationError) -> str:
    """A pydantic validation error as one line: `field: problem; field: problem`."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())


def default_bentoml_home() -> Path:
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")


class Settings(BaseSettings):
    """Where the stack runs, which versions it serves and how traffic is split."""

    model_config = SettingsConfigDict(env_prefix="CANARY_", extra="forbid", validate_assignment=True)

    project_dir: Path = Field(default_factory=Path.cwd, description="folder holding service.py")
    state_dir: Path = Field(Path(".canary"), description="rendered nginx config, logs, pid files")
    host: str = Field("127.0.0.1", description="address nginx listens on")
    port: Port = Field(8000, ge=1, le=65535, description="nginx's public port")
    blue_port: Port = Field(3001, ge=1, le=65535, description="blue's loopback port")
    green_port: Port = Field(3002, ge=1, le=65535, description="green's loopback port")
    blue_version: str = Field(STABLE_VERSION, pattern=r"^v\d+\.\d+\.\d+$")
    green_version: str = Field(CANDIDATE_VERSION, pattern=r"^v\d+\.\d+\.\d+$")
    green_weight: int | None = Field(
        None, ge=0, le=100, description="green's percent at start [default: the last split, or 10 at the first start]"
    )
    source: Literal["code", "bento"] = Field("code", description="serve service.py, or the built Bentos")
    workers: int = Field(1, ge=1, le=16, description="BentoML worker processes per version")
    max_inflight: int = Field(
        128, ge=1, le=10000, description="requests in flight per version; nginx answers more with a fast 503"
    )
    bentoml_home: Path = Field(default_factory=default_bentoml_home)
    nginx_bin: str = "nginx"
    ready_timeout: float = Field(60.0, gt=0, le=600, description="seconds to wait for all three to be ready")

    @field_validator("project_dir", "state_dir", "bentoml_home")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        return path.expanduser().absolute()

    @model_validator(mode="after")
    def _distinct_ports(self) -> "Settings":
        ports = (self.port, self.blue_port, self.green_port)
        if len(set(ports)) != 3:
            raise ValueError(f"port, blue_port and green_port must differ, got {ports}")
        return self

    def version(self, color: str) -> str:
        return self.blue_version if color == "blue" else self.green_version

    def backend_port(self, color: str) -> int:
        return self.blue_port if color == "blue" else self.green_port

    def bento_tag(self, color: str) -> str:
        return f"{MODEL_NAME}:{self.version(color)}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def backend_url(self, color: str) -> str:
        return f"http://127.0.0.1:{self.backend_port(color)}"
