"""The kit's one domain exception, and pydantic's validation errors as one line: what the CLI prints at its edge
(exit code 1) and the dashboard answers with (a 4xx naming what is wrong)."""

from __future__ import annotations

from pydantic import ValidationError


class CanaryError(Exception):
    """A problem the user can fix; the CLI prints it as one line and exits 1."""


def describe(exc: ValidationError) -> str:
    """A pydantic validation error as one line: `field: problem; field: problem` (pydantic's own messages, without
    their "Value error, " prefix). The example service logs a bad request's errors the same way (its own web
    module, which this tool may not import): tests/test_config.py holds the two to one form."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
    )
