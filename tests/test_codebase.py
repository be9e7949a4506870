"""The codebase's own rules, checked by the tools that know them: mypy types canary_kit/ ([tool.mypy]),
import-linter keeps its layers pointing one way ([tool.importlinter]) and ruff lints and formats every Python file
([tool.ruff]). A failure prints the tool's report."""

from __future__ import annotations

import subprocess
import sys

from conftest import BIN, ROOT


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_canary_kit_type_checks():
    result = run([sys.executable, "-m", "mypy"])  # files and settings: [tool.mypy] in pyproject.toml
    assert result.returncode == 0, f"mypy found problems:\n{result.stdout}{result.stderr}"


def test_imports_point_down_the_layers():
    result = run([str(BIN / "lint-imports"), "--no-logo"])  # contracts: [tool.importlinter] in pyproject.toml
    assert result.returncode == 0, f"lint-imports found broken contracts:\n{result.stdout}{result.stderr}"


def test_ruff_lint_passes():
    result = run([str(BIN / "ruff"), "check", "--no-cache", "."])
    assert result.returncode == 0, f"ruff check found problems (`ruff check --fix` mends some):\n{result.stdout}"


def test_ruff_format_is_kept():
    result = run([str(BIN / "ruff"), "format", "--check", "--no-cache", "."])
    assert result.returncode == 0, f"files `ruff format` would change:\n{result.stdout}"


MAX_LINES = 400  # issue #29: a product file longer than this holds two things


def test_no_product_file_is_longer_than_400_lines():
    """Every file of the kit (code, nginx templates, njs, the dashboard's page, the default spec) and of nginx/."""
    listed = run(["git", "ls-files", "canary_kit", "nginx"]).stdout.split()
    files = [ROOT / name for name in listed if (ROOT / name).is_file()]
    lines = {str(f.relative_to(ROOT)): len(f.read_text(encoding="utf-8").splitlines()) for f in files}
    longest = sorted(lines.items(), key=lambda item: -item[1])[:3]
    print(f"\n{len(lines)} files; the longest: {longest}")
    assert len(lines) > 70 and not {name: n for name, n in lines.items() if n > MAX_LINES}
