"""MODEL_PATH, as the original design had it: serve a model archive (`bentoml models export`), importing it into
the model store when the store does not hold it yet.
"""

from __future__ import annotations

import tarfile
from datetime import datetime
from pathlib import Path

import yaml


class ArchiveError(Exception):
    """The archive cannot be served as asked; the message says why and what to do."""


def archive_info(path: Path) -> dict:
    """name, version and creation_time from the archive's model.yaml, without unpacking the model."""
    if not path.is_file():
        raise ArchiveError(
            f"MODEL_PATH {path} is not a file (expected a .bentomodel archive from `bentoml models export`)"
        )
    try:
        with tarfile.open(path) as archive:
            member = next(m for m in archive.getmembers() if Path(m.name).name == "model.yaml")
            info = yaml.safe_load(archive.extractfile(member))
    except (tarfile.TarError, StopIteration, yaml.YAMLError, OSError) as exc:
        raise ArchiveError(f"MODEL_PATH {path} is not a BentoML model archive ({exc or 'no model.yaml'})") from None
    created = info["creation_time"]
    created = created if isinstance(created, datetime) else datetime.fromisoformat(str(created))
    return {"name": str(info["name"]), "version": str(info["version"]), "creation_time": created}


def import_archive(path: Path, model_name: str, wanted_version: str | None = None) -> str:
    """The archive's version, after importing it into the store if missing.

    Refuses another model, a version other than `wanted_version` (when given), and an archive whose tag the store
    already holds from another training.
    """
    import bentoml

    path = path.expanduser().resolve()
    info = archive_info(path)
    tag = f"{model_name}:{info['version']}"
    if info["name"] != model_name:
        raise ArchiveError(f"MODEL_PATH {path} holds model {info['name']!r}, not {model_name!r}")
    if wanted_version not in (None, info["version"]):
        raise ArchiveError(
            f"MODEL_PATH {path} holds {tag} but MODEL_VERSION (or --arg model_version) asks for "
            f"{wanted_version}: drop one or make them agree"
        )
    try:
        stored = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        bentoml.models.import_model(str(path))
        return info["version"]
    if stored.info.creation_time != info["creation_time"]:
        raise ArchiveError(
            f"MODEL_PATH {path} holds {tag} created {info['creation_time']}, but the model store already holds "
            f"another {tag} (created {stored.info.creation_time}); `bentoml models delete {tag}` to serve the archive"
        )
    return info["version"]
