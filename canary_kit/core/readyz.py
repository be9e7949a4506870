"""Whether a backend is ready, and which version it says it serves: its 200 answer to GET /readyz, and that
answer's `X-Model-Version` if it has one.

A service need not name its version: the stack knows which version it started in each slot (and nginx names the
version of the slot that answered). One that does is checked against it. The rule, `version_of`, is read from an
HTTP answer here (`ready`, `serving`: the local stack's backends, and any version through nginx, which always names
it) or from what `curl` prints of the answer's head (`ready_from_curl`: compose's backends, asked with CURL_HEAD
inside their containers). nginx/canary-state-init.sh's `served()` applies the same rule in shell;
tests/test_readyz.py runs each of them on one table of answers (tests/data/readyz_answers.json).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

from canary_kit.core import config

HEADER = "x-model-version"
CURL_HEAD = ("curl", "-fsS", "-D", "-", "-o", "/dev/null")  # prints the answer's head, fails on 4xx and 5xx
VERSION = re.compile(config.VERSION, re.ASCII)  # a version as BentoML accepts it in a tag


def version_of(status: int, values: list[str]) -> str | None:
    """The version a /readyz answer names: its first X-Model-Version, when the answer is a 200 and the value (less
    spaces and tabs around it) is a version as BentoML accepts one in a tag (v1.2.0, 2oxwsnhr22k7max4; not
    `latest`); else None."""
    if status != 200 or not values:
        return None
    value = values[0].strip(" \t")
    return value if VERSION.fullmatch(value) and value != "latest" else None


@dataclass(frozen=True)
class Ready:
    """A backend that answers /readyz with a 200, and the version it names (None: it names none)."""

    reported: str | None = None


def ready(url: str, headers: dict[str, str] | None = None) -> Ready | None:
    """Whether the backend at `url` is ready (None: it is not, or does not answer), and what version it names."""
    try:
        response = httpx.get(f"{url}/readyz", headers=headers, timeout=5.0, trust_env=False)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return Ready(version_of(response.status_code, response.headers.get_list(HEADER)))


def ready_from_curl(returncode: int, stdout: str) -> Ready | None:
    """`ready` from what CURL_HEAD printed of the answer's head (None when curl failed or the answer is no 200)."""
    if returncode != 0:
        return None
    status, values = head_of(stdout)
    return Ready(version_of(status, values)) if status == 200 else None


def serving(
    url: str, headers: dict[str, str] | None = None, transport: httpx.HTTPTransport | None = None
) -> str | None:
    """The version that answers /readyz at `url`, or None when it is not ready (or does not answer). `transport`:
    another way there (nginx's admin socket)."""
    try:
        with httpx.Client(transport=transport, timeout=5.0, trust_env=False) as client:
            response = client.get(f"{url}/readyz", headers=headers)
    except httpx.HTTPError:
        return None
    return version_of(response.status_code, response.headers.get_list(HEADER))


def version_from_curl(returncode: int, stdout: str) -> str | None:
    """The version named by an answer that CURL_HEAD fetched (None when curl failed)."""
    return version_in_head(stdout) if returncode == 0 else None


def version_in_head(head: str) -> str | None:
    """The version named in an answer's head as `curl -D -` prints it (status line, then header lines; the head of
    the last answer counts when curl shows more than one)."""
    return version_of(*head_of(head))


def head_of(head: str) -> tuple[int, list[str]]:
    """The status and the X-Model-Version values of the last answer in a head as `curl -D -` prints it."""
    status, values = 0, list[str]()
    for line in head.replace("\r\n", "\n").split("\n"):
        if line.startswith("HTTP/"):
            parts = line.split()
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            values = []
            continue
        name, colon, value = line.partition(":")
        if colon and name.lower() == HEADER:
            values.append(value)
    return status, values
