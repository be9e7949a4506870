"""`canary init`: write the `[tool.canary]` table of an existing BentoML project from what it finds there."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from canary_kit.core.config import default_bentoml_home
from canary_kit.core.errors import CanaryError


def init(
    project: Annotated[Path, typer.Option(help="the BentoML project's folder")] = Path("."),
    example: Annotated[
        list[str] | None,
        typer.Option(help="a request body for an endpoint, PATH=FILE (JSON), where one made from its schema fails"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing \\[tool.canary] table")] = False,
    show: Annotated[bool, typer.Option("--print", help="print the table instead of writing it")] = False,
) -> None:
    """Serve the project's service once, find its prediction endpoints, where its answers hold the predictions, the
    task and the versions built, and write the \\[tool.canary] table into pyproject.toml; say what is still missing."""
    from canary_kit.stacks.discover import discover, write_table

    examples = {}
    for given in example or []:
        path, equals, file = given.partition("=")
        if not equals or not path.startswith("/"):
            raise CanaryError(f"--example wants PATH=FILE, like /predict=request.json; got {given!r}")
        try:
            examples[path] = Path(file).read_text().strip()
        except OSError as exc:
            raise CanaryError(f"--example {given}: cannot read {file}: {exc.strerror}") from None
    folder = project.expanduser().absolute()
    pyproject = folder / "pyproject.toml"
    if not force and not show and pyproject.is_file() and "[tool.canary]" in pyproject.read_text():
        raise CanaryError(f"{pyproject} already has [tool.canary]: --force replaces it, or edit it there")
    typer.echo(f"looking at the BentoML project in {folder} ...")
    found = discover(folder, default_bentoml_home(), typer.echo, examples)
    table = found.table()
    if show:
        typer.echo(table, nl=False)
    else:
        typer.echo(write_table(pyproject, table, force))
    for line in found.notes:
        typer.echo(f"note: {line}")
    for line in found.missing:
        typer.echo(f"missing: {line}")
    if not found.missing:
        typer.echo("ready: `canary up` runs blue and green behind nginx on :8000")
