"""Reading the project's docker-compose.yml as compose does: services, bind mounts, published ports, and the
variables of `.env` (which `canary … --compose` also writes, to pin the versions the stack runs)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from canary_kit.config import CanaryError
from canary_kit.files import write_atomic


def compose_service(compose_file: Path, name: str) -> dict:
    try:
        spec = yaml.safe_load(compose_file.read_text()) or {}
        return spec["services"][name]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise CanaryError(f"{compose_file} has no readable `{name}` service ({exc})") from None


INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<colon>:?)-(?P<default>[^}]*))?\}")


def compose_variables(folder: Path) -> dict[str, str]:
    """What compose interpolates with: the project's .env file, overridden by the environment."""
    found = {}
    dotenv = folder / ".env"
    if dotenv.is_file():
        for line in dotenv.read_text().splitlines():
            name, sep, value = line.strip().partition("=")
            if sep and not name.startswith("#"):
                found[name.strip()] = value.strip().strip("'\"")
    return {**found, **os.environ}


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME-default}."""

    def value(match: re.Match) -> str:
        given = variables.get(match["name"])
        if match["default"] is not None and (given is None or (match["colon"] and not given)):
            return match["default"]
        return given or ""

    return INTERPOLATION.sub(value, text)


def mounted_folder(service: dict, target: str, base: Path) -> Path:
    """The host folder a compose service bind-mounts at `target` (short or long volume syntax)."""
    variables = compose_variables(base)
    for volume in service.get("volumes") or []:
        if isinstance(volume, str) and ":" in volume:
            source, _, rest = interpolate(volume, variables).partition(":")
            if rest.split(":")[0] == target:
                return (base / source).resolve()
        elif isinstance(volume, dict) and volume.get("target") == target and volume.get("source"):
            return (base / interpolate(volume["source"], variables)).resolve()
    raise CanaryError(f"the compose nginx service mounts no routing state folder at {target}")


def published_port(service: dict, container_port: int) -> int:
    """The host port a compose service publishes for `container_port` (short or long port syntax)."""
    for port in service.get("ports") or []:
        if isinstance(port, dict) and int(port.get("target", 0)) == container_port and port.get("published"):
            return int(port["published"])
        parts = str(port).split("/")[0].split(":")
        if len(parts) >= 2 and parts[-1] == str(container_port):
            return int(parts[-2])
    raise CanaryError(f"the compose nginx service publishes no host port for its port {container_port}")


def image_repository(service: dict, variables: dict[str, str]) -> str:
    """The repository part of a service's image (`penguin_classifier` of `penguin_classifier:${TAG:-v1}`)."""
    image = interpolate(str(service.get("image", "")), variables)
    repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    if not repository:
        raise CanaryError("the compose service has no image")
    return repository


def set_variables(folder: Path, values: dict[str, str]) -> None:
    """Set NAME=value lines in the project's .env (compose reads it on every command), keeping every other line."""
    dotenv = folder / ".env"
    lines = dotenv.read_text().splitlines() if dotenv.is_file() else []
    pending = dict(values)
    kept = []
    for line in lines:
        name = line.split("=", 1)[0].strip()
        if name in pending:
            kept.append(f"{name}={pending.pop(name)}")
        else:
            kept.append(line)
    kept += [f"{name}={value}" for name, value in pending.items()]
    write_atomic(dotenv, "\n".join(kept) + "\n")
