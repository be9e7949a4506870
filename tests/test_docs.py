"""The documentation: the site under docs/ builds with MkDocs in strict mode (mkdocs.yml: a broken link, a missing
anchor or a page left out of the nav is a warning, and strict makes any warning a failure), and the README stays a
short tour whose every relative link reaches a file, and a heading where it names one."""

from __future__ import annotations

import re
import subprocess
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

import typer
from markdown.extensions.toc import slugify

from conftest import BIN, ROOT

README = ROOT / "README.md"
MAX_README_LINES = 250
# An inline link or image: [text](target) or ![alt](target "title"); the text may wrap over lines.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def test_the_site_builds_strictly_with_no_warning(tmp_path: Path):
    result = subprocess.run(
        [
            str(BIN / "mkdocs"),
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert result.returncode == 0 and not warnings, (
        f"mkdocs build --strict: exit {result.returncode}, {len(warnings)} warnings:\n"
        + "\n".join(warnings or [output])
    )
    pages = sorted(p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html"))
    sources = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert len(pages) == len(sources), f"{len(pages)} pages built from {len(sources)} sources: {pages} {sources}"


def anchors(markdown: Path) -> set[str]:
    """The ids of a page's headings, as the site (Python-Markdown's toc) makes them; code blocks hold no heading."""
    text = FENCE.sub("", markdown.read_text())
    return {
        slugify(re.sub(r"[`*_]", "", m.group(1)).replace("[", "").replace("]", ""), "-") for m in HEADING.finditer(text)
    }


def test_the_readme_is_short_and_every_relative_link_resolves():
    text = README.read_text()
    lines = text.count("\n")
    links = LINK.findall(FENCE.sub("", text))
    relative = [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link)]  # not http:, mailto:, ...
    broken = []
    for link in relative:
        path, _, anchor = link.partition("#")
        target = (ROOT / path).resolve() if path else README
        if not target.exists():
            broken.append(f"{link}: no file {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(ROOT)}")
    print(f"README: {lines} lines, {len(links)} links, {len(relative)} relative, {len(broken)} broken")
    assert lines < MAX_README_LINES, f"README.md has {lines} lines: at most {MAX_README_LINES - 1} (move text to docs/)"
    assert relative, "the README links to no page under docs/"
    assert not broken, "README links that lead nowhere:\n" + "\n".join(broken)


def commands(group, prefix: str = "canary") -> list[str]:
    """Every command of the `canary` app, subcommands of a group as `canary k8s render`."""
    found = []
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            found += commands(command, f"{prefix} {name}")
        else:
            found.append(f"{prefix} {name}")
    return found


def test_the_readme_shows_every_command():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "canary"]
    app = import_module(script.module).app  # the module of `canary`'s main holds its typer app
    names = commands(typer.main.get_command(app))
    missing = [
        name
        for name in names
        if not re.search(rf"(?m)^{re.escape(name)}(?:\s|$)|\| {re.escape(name)}\b", README.read_text())
    ]
    print(f"{len(names)} commands, {len(missing)} without an example in the README")
    assert not missing, f"commands with no example line in README.md: {missing}"


def test_the_architecture_page_names_every_module():
    page = (ROOT / "docs" / "architecture.md").read_text()
    modules = sorted(p.stem for p in (ROOT / "canary_kit").rglob("*.py") if p.stem != "__init__")
    missing = [m for m in modules if f"`{m}`" not in page]
    print(f"{len(modules)} modules of canary_kit, {len(missing)} not named in docs/architecture.md")
    assert not missing, f"modules docs/architecture.md does not describe (add a row): {missing}"
