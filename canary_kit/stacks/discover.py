"""`canary init`: the `[tool.canary]` table of an existing BentoML project, from what the project already has.

    found = discover(Path("."), bentoml_home, echo)   # serves the service once, asks it, stops it
    write_table(Path("pyproject.toml"), found.table())

What it reads: the service that `bentofile.yaml` (or pyproject's `[tool.bentoml.build]`) names; its Bentos in the
store (one per version: the newest is green, the one before it blue); its OpenAPI document and one answer from each
POST endpoint, served from its newest Bento (or its code when it has none yet), to find where each answer holds
the predictions (a JSON path), their confidence, and the task (classes or numbers). What it cannot tell is one
line each in `missing`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from canary_kit.core.config import VERSION
from canary_kit.core.errors import CanaryError
from canary_kit.core.processes import Child
from canary_kit.stacks import probe
from canary_kit.stacks.backends import bentoml_bin, private_home, wait_ready

# Where answers usually hold their predictions and their probabilities, most telling first.
PREDICTION_KEYS = (
    "predictions", "prediction", "predicted", "labels", "label", "classes", "class", "results", "result",
    "outputs", "output", "values", "value", "y", "target", "targets",
)  # fmt: skip
CONFIDENCE_KEYS = ("probabilities", "probability", "probas", "proba", "scores", "confidences", "confidence")


@dataclass
class Found:
    """What `canary init` found, and what it could not."""

    service_name: str
    source: str = "bento"
    service: str = "."
    task: str = "classification"
    endpoints: dict[str, dict[str, str]] = field(default_factory=dict)
    versions: list[str] = field(default_factory=list)  # Bento versions, oldest first
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The TOML of `[tool.canary]` and one `[tool.canary.endpoints."PATH"]` table per prediction endpoint."""
        lines = [
            "[tool.canary]",
            "# Written by `canary init`; every setting: `canary init --help`, and the docs' configuration page.",
            f'service_name = "{self.service_name}"  # Bentos (and images) are {self.service_name}:VERSION',
            f'task = "{self.task}"',
        ]
        if self.source != "bento":
            lines.append(f'source = "{self.source}"  # no Bento yet: the service\'s code (`bentoml serve .`)')
        if len(self.versions) >= 2:
            lines.append(f'blue_version = "{self.versions[-2]}"  # the stable version')
        if self.versions:
            lines.append(f'green_version = "{self.versions[-1]}"  # the candidate: its newest Bento')
        for path, where in self.endpoints.items():
            lines += ["", f'[tool.canary.endpoints."{path}"]']
            lines += [f'{key} = "{value}"' for key, value in where.items()]
        return "\n".join(lines) + "\n"


def bentofile_service(project: Path) -> str:
    """The service the project builds: `service:` of bentofile.yaml, or pyproject's [tool.bentoml.build]."""
    bentofile = project / "bentofile.yaml"
    if bentofile.is_file():
        try:
            data = yaml.safe_load(bentofile.read_text()) or {}
        except yaml.YAMLError as exc:
            raise CanaryError(f"{bentofile} is not valid YAML: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("service"), str):
            return data["service"]
        raise CanaryError(f'{bentofile} names no service (a line like `service: "service:MyService"`)')
    pyproject = project / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        build = tomllib.loads(pyproject.read_text()).get("tool", {}).get("bentoml", {}).get("build", {})
        if isinstance(build.get("service"), str):
            return build["service"]
    raise CanaryError(
        f"no bentofile.yaml (nor [tool.bentoml.build] in pyproject.toml) in {project}: run `canary init` in the "
        "folder of a BentoML project"
    )


def bento_versions(bentoml_home: Path, name: str) -> list[str]:
    """The versions of the service's Bentos in the store, oldest first (by when they were built)."""
    folder = bentoml_home / "bentos" / name
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name != "latest" and re.fullmatch(VERSION, p.name)]
    return [p.name for p in sorted(found, key=_built)]


def _built(bento: Path) -> float:
    manifest = bento / "bento.yaml"
    return manifest.stat().st_mtime if manifest.exists() else 0.0


def _scalars(value: object) -> bool:
    return isinstance(value, list) and all(v is None or isinstance(v, (str, int, float, bool)) for v in value)


def predictions_path(answer: object) -> str | None:
    """Where an answer holds its predictions, guessed from its shape and its keys (None: no guess)."""
    if _scalars(answer) and answer:
        return "$[*]"
    if isinstance(answer, list) and answer and isinstance(answer[0], dict):
        key = next((k for k in PREDICTION_KEYS if k in answer[0]), None)
        return None if key is None else f"$[*].{key}"
    if not isinstance(answer, dict):
        return None
    keys = [k for k in PREDICTION_KEYS if k in answer] + [k for k in answer if k not in CONFIDENCE_KEYS]
    for key in keys:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key):
            continue
        value = answer[key]
        if _scalars(value) and value:
            return f"$.{key}[*]"
        if isinstance(value, (str, int, float, bool)) and key in PREDICTION_KEYS:
            return f"$.{key}"
    numbers = [k for k, v in answer.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == 1 and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", numbers[0]):
        return f"$.{numbers[0]}"  # one number in the answer: a regressor's {"admission_chance": 0.73}
    return None


def confidence_path(answer: object, rows: int) -> str | None:
    """Where an answer holds each row's probabilities (a list or an object of them per row, or columns)."""
    if not isinstance(answer, dict):
        return None
    for key in CONFIDENCE_KEYS:
        value = answer.get(key)
        if isinstance(value, list) and len(value) == rows:
            return f"$.{key}[*]"
        if rows == 1 and isinstance(value, (dict, float)):
            return f"$.{key}"
        if isinstance(value, dict) and all(isinstance(v, list) and len(v) == rows for v in value.values()):
            return f"$.{key}"  # columns: {"class": [p per row]}
    return None


def task_of(values: list) -> tuple[str, str | None]:
    """The task the predictions fit, and a note when it is a guess."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        if any(isinstance(v, float) and not v.is_integer() for v in values):
            return "regression", None
        return "classification", 'the predictions are whole numbers, read as classes: set task = "regression" if not'
    return "classification", None


def discover(
    project: Path, bentoml_home: Path, echo: Callable[[str], None], examples: dict[str, str] | None = None
) -> Found:
    """Serve the project's service once on a free loopback port, ask it, and say what the table should hold."""
    service = bentofile_service(project)
    url_probe = _Served(project, bentoml_home)
    versions_by_name: list[str] = []
    with url_probe as served:
        document = probe.openapi(served.url)
        name = str(document.get("info", {}).get("title") or "")
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
            raise CanaryError(f"the service calls itself {name!r} in its OpenAPI document: not a Bento name")
        versions_by_name = bento_versions(bentoml_home, name)
        found = Found(service_name=name, versions=versions_by_name)
        if served.source == "code":
            found.source, found.service = "code", service
        echo(f"service {name} ({service}), served from {served.what}")
        for path in probe.post_endpoints(document):
            given = (examples or {}).get(path)
            body = probe.json_body(given) if given else probe.request_body(document, path)
            answer = probe.ask(served.url, path, body)
            if answer.status != 200:
                found.missing.append(
                    f"{path}: it answered {answer.status} to a request made from its OpenAPI schema; if it predicts, "
                    f"give one: canary init --example {path}=FILE"
                )
                continue
            where = predictions_path(answer.answer)
            if where is None:
                found.notes.append(f"{path}: no predictions found in its answer: left out (not a prediction endpoint?)")
                continue
            values = probe.select(where, answer.answer)
            task, note = task_of(values)
            found.task = task
            if note:
                found.notes.append(f"{path}: {note}")
            entry = {"predictions": where}
            confidence = confidence_path(answer.answer, len(values)) if task == "classification" else None
            if confidence:
                entry["confidence"] = confidence
            if given:
                entry["example"] = given
            found.endpoints[path] = entry
            echo(f"  {path}: predictions at {where}{f', confidence at {confidence}' if confidence else ''} ({task})")
    if not found.endpoints:
        found.missing.append("no prediction endpoint found: name them in [tool.canary.endpoints]")
    if not versions_by_name:
        found.missing.append(f"no Bento of {found.service_name} yet: build one per version (bentoml build --version V)")
    elif len(versions_by_name) == 1:
        found.missing.append(
            f"blue_version: only one Bento of {found.service_name} ({versions_by_name[0]}): build the candidate too "
            "(bentoml build --version V), then set blue_version and green_version"
        )
    return found


class _Served:
    """The service run once for `canary init`: its newest Bento, else its code; stopped on leaving."""

    def __init__(self, project: Path, bentoml_home: Path) -> None:
        self.project, self.bentoml_home = project, bentoml_home
        self.child: Child | None = None
        self.folder = Path(tempfile.mkdtemp(prefix="canary-init-"))
        self.url, self.what, self.source = "", "", "bento"

    def __enter__(self) -> _Served:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        service = bentofile_service(self.project)
        target = ["."]
        self.what, self.source = "its code (bentoml serve .)", "code"
        home = private_home(self.folder / "bentoml", self.bentoml_home)
        newest = _newest_bento(self.bentoml_home, service, self.project)
        if newest:
            target, self.what, self.source = [newest], f"its newest Bento, {newest}", "bento"
        argv = [bentoml_bin(), "serve", *target, "--host", "127.0.0.1", "--port", str(port)]
        env = {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
        self.child = Child("service", argv, self.folder / "serve.log", env, self.project)
        self.url = f"http://127.0.0.1:{port}"
        try:
            self.child.start()
            wait_ready([self.child], {"the service": f"{self.url}/readyz"}, 120)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.child is not None:
            self.child.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def _newest_bento(bentoml_home: Path, service: str, project: Path) -> str | None:
    """NAME:VERSION of the newest Bento built from this project, guessed by the service's class name."""
    cls = service.rpartition(":")[2]
    bentos = bentoml_home / "bentos"
    if not bentos.is_dir():
        return None
    newest = None
    for folder in bentos.iterdir():
        for version in bento_versions(bentoml_home, folder.name):
            manifest = folder / version / "bento.yaml"
            try:
                text = manifest.read_text()
            except OSError:
                continue
            if f":{cls}" in text or f"service: {service}" in text:
                mtime = manifest.stat().st_mtime
                if newest is None or mtime > newest[0]:
                    newest = (mtime, f"{folder.name}:{version}")
    return None if newest is None else newest[1]


def write_table(pyproject: Path, table: str, force: bool = False) -> str:
    """Put the table in pyproject.toml (created if missing); an existing [tool.canary] is kept unless `force`."""
    text = pyproject.read_text() if pyproject.is_file() else ""
    if re.search(r"^\[tool\.canary(\.|\])", text, re.MULTILINE):
        if not force:
            raise CanaryError(f"{pyproject} already has [tool.canary]: --force replaces it, or edit it there")
        kept, skipping = [], False
        for line in text.splitlines(keepends=True):
            if line.startswith("["):
                skipping = bool(re.match(r"\[tool\.canary(\.|\])", line))
            if not skipping:
                kept.append(line)
        text = "".join(kept)
    text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + table
    pyproject.write_text(text)
    return f"wrote [tool.canary] to {pyproject}"
