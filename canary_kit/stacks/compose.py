"""The project's docker-compose.yml as compose itself resolves it, and the `.env` lines `canary … --compose` writes.

Compose is asked, not imitated: `config --format json` (Compose v2) or `config` (docker-compose 1.29, which writes
YAML only) gives the services with every variable interpolated from the environment and the project's `.env`,
bind-mount sources as absolute paths and ports in one syntax. What compose cannot tell without a running engine
is kept here: docker-compose 1.29's project name (v2 names it in its JSON), and the `.env` pins this tool writes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import yaml
from dotenv import dotenv_values

from canary_kit.core.errors import CanaryError
from canary_kit.core.files import write_atomic

CONFIG_TIMEOUT = 60  # seconds for one `compose config`
_no_json: set[tuple[str, ...]] = set()  # compose commands whose `config` has no --format json (1.29)
_resolved: dict[tuple, dict] = {}  # one `compose config` per compose file, command, .env and environment


def run(
    compose_cmd: Sequence[str],
    compose_file: Path,
    *args: str,
    check: bool = True,
    env: dict | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """`COMPOSE -f FILE ARGS…`; a missing compose, a time-out or (with `check`) a failure is a CanaryError."""
    argv = [*compose_cmd, "-f", str(compose_file), *args]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise CanaryError(f"{compose_cmd[0]!r} not found: is Docker Compose installed?") from None
    except subprocess.TimeoutExpired:
        raise CanaryError(f"`{' '.join(argv[:2])} {' '.join(args[:3])}` did not answer within {timeout:.0f}s") from None
    if check and result.returncode != 0:
        raise CanaryError(f"{' '.join(args[:3])} failed: {(result.stderr or result.stdout).strip()[-300:]}")
    return result


def compose_config(compose_file: Path, compose_cmd: Sequence[str]) -> dict:
    """The compose file as `compose config` resolves it (the same dict from v2's JSON and from 1.29's YAML)."""
    compose_file = compose_file.absolute()
    dotenv = compose_file.parent / ".env"
    key = (
        str(compose_file),
        tuple(compose_cmd),
        _stamp(compose_file),
        _stamp(dotenv),
        tuple(sorted(os.environ.items())),
    )
    spec = _resolved.get(key)  # one lookup: another thread may clear the cache between two
    if spec is not None:
        return spec
    if tuple(compose_cmd) not in _no_json:
        text = run(compose_cmd, compose_file, "config", "--format", "json", timeout=CONFIG_TIMEOUT).stdout
        try:
            spec = json.loads(text)
        except ValueError:  # 1.29 prints its usage to stderr and exits 0
            _no_json.add(tuple(compose_cmd))
    if spec is None:
        try:
            spec = yaml.safe_load(run(compose_cmd, compose_file, "config", timeout=CONFIG_TIMEOUT).stdout)
        except yaml.YAMLError as exc:
            raise CanaryError(f"compose config of {compose_file} is not readable ({exc})") from None
    if not isinstance(spec, dict):
        raise CanaryError(f"compose config of {compose_file} is empty")
    _resolved.clear()  # only the latest: a changed .env or environment makes older answers stale
    _resolved[key] = spec
    return spec


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def compose_service(compose_file: Path, name: str, compose_cmd: Sequence[str]) -> dict:
    """One service of the compose file, as compose resolves it."""
    try:
        return compose_config(compose_file, compose_cmd)["services"][name]
    except (KeyError, TypeError):
        raise CanaryError(f"{compose_file} has no `{name}` service") from None


def project_name(compose_file: Path, compose_cmd: Sequence[str]) -> str:
    """The compose project's name (the `com.docker.compose.project` label of its containers). Compose v2 says it in
    its configuration; docker-compose 1.29 does not, so its rule is applied here: COMPOSE_PROJECT_NAME from the
    environment, else from the project's .env (read with python-dotenv, as 1.29 reads it), else the compose file's
    folder name; lower-cased, keeping only a-z, 0-9, - and _."""
    name = compose_config(compose_file, compose_cmd).get("name")
    if isinstance(name, str) and name:
        return name
    folder = compose_file.absolute().parent
    given = os.environ.get("COMPOSE_PROJECT_NAME")
    if not given and (folder / ".env").is_file():
        given = dotenv_values(folder / ".env", encoding="utf-8-sig").get("COMPOSE_PROJECT_NAME")
    return re.sub(r"[^-_a-z0-9]", "", (given or folder.name).lower()) or "default"


def mounted_folder(service: dict, target: str, base: Path) -> Path:
    """The host folder a compose service bind-mounts at `target` (1.29 writes `source:target:mode`, v2 a mapping)."""
    for volume in service.get("volumes") or []:
        if isinstance(volume, str) and ":" in volume:
            source, _, rest = volume.partition(":")
            if rest.split(":")[0] == target:
                return (base / source).resolve()
        elif isinstance(volume, dict) and volume.get("target") == target and volume.get("source"):
            return (base / volume["source"]).resolve()
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


def _image_parts(service: dict) -> tuple[str, str | None]:
    image = str(service.get("image", ""))
    if ":" in image.rsplit("/", 1)[-1]:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, None


def image_repository(service: dict) -> str:
    """The repository part of a resolved service's image (`fraud_scorer` of `fraud_scorer:v1.0.0`)."""
    repository = _image_parts(service)[0]
    if not repository:
        raise CanaryError("the compose service has no image")
    return repository


def image_tag(service: dict) -> str | None:
    """The tag of a resolved service's image (`v1.0.0` of `fraud_scorer:v1.0.0`); None without one."""
    return _image_parts(service)[1]


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
