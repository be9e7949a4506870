"""Where an answer holds its predictions: a small JSON path, checked once and applied to answers.

    $.predictions[*]       each element of the answer's `predictions` list: one prediction per row
    $.admission_chance     one value: the answer is one row
    $[*].label             the `label` of each object in a list answered at the top level
    $.output.scores[0]     a fixed element

The syntax is the common core of JSONPath (RFC 9535): `$`, then `.name` (letters, digits, `_` and `-`), `[N]` or
`[*]`; at most one `[*]`, which makes the rows. nginx/njs applies the same paths to each answer as it passes
(canary_kit/templates/canary-observe.js), in the compiled form `steps` gives; `select` here is the same rule in Python,
and tests/test_jsonpath.py holds the two to one table of answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\*|\d{1,6})\]")
MAX_STEPS = 16


class PathError(ValueError):
    """A path outside the supported syntax (its message says where)."""


@dataclass(frozen=True)
class JsonPath:
    """A parsed path: `text` as written, `steps` as njs gets them (a name, an index, or "*")."""

    text: str
    steps: tuple[str | int, ...]

    @property
    def rows(self) -> bool:
        """Whether the path selects one value per row (it has `[*]`) rather than one value."""
        return "*" in self.steps

    def select(self, answer: object) -> list | None:
        """The values the path selects in a parsed answer, one per row; None when the answer does not have them."""
        return select(self.steps, answer)


def parse(text: str) -> JsonPath:
    """A path from its text; PathError names what is wrong."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise PathError(f"a JSON path starts with $, like $.predictions[*]; got {text!r}")
    steps: list[str | int] = []
    at = 1
    while at < len(text):
        found = STEP.match(text, at)
        if found is None:
            raise PathError(f"JSON path {text!r}: cannot read {text[at:]!r} (use .name, [N] or [*])")
        name, index = found.groups()
        steps.append(name if name is not None else "*" if index == "*" else int(index))
        at = found.end()
    if steps.count("*") > 1:
        raise PathError(f"JSON path {text!r}: at most one [*] (it makes the rows)")
    if len(steps) > MAX_STEPS:
        raise PathError(f"JSON path {text!r}: at most {MAX_STEPS} steps")
    return JsonPath(text, tuple(steps))


def select(steps: tuple[str | int, ...], answer: object) -> list | None:
    """Follow `steps` through `answer`: the values at `*` (one per row), or the one value at the end; None when a
    step is missing or of the wrong kind (a name on a list, an index beyond the end, `*` on an object)."""
    node = answer
    for at, step in enumerate(steps):
        if step == "*":
            if not isinstance(node, list):
                return None
            rest = steps[at + 1 :]
            values = [select(rest, item) for item in node]
            return None if any(v is None for v in values) else [v[0] for v in values if v is not None]
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                return None
            node = node[step]
        else:
            if not isinstance(node, dict) or step not in node:
                return None
            node = node[step]
    return [node]
