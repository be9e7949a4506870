"""What a running version of a service says of itself, and whether `[tool.canary]` fits it: its endpoints (from its
OpenAPI document, /docs.json), an answer from each prediction endpoint, and what the configured JSON paths find in
that answer.

`canary up` asks each version before nginx starts, and refuses in one line a configuration that does not fit (an
endpoint the service does not have, a path that finds nothing, a task the predictions do not fit); `canary init`
asks one to write the configuration in the first place. A request body comes from the endpoint's `example`, else
from the examples in the service's OpenAPI schema, else it is made from the schema's types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx

from canary_kit.core import jsonpath
from canary_kit.core.config import Endpoint
from canary_kit.core.errors import CanaryError

TIMEOUT = 10.0


def openapi(url: str) -> dict:
    """The service's OpenAPI document (BentoML serves it at /docs.json)."""
    try:
        response = httpx.get(f"{url}/docs.json", timeout=TIMEOUT, trust_env=False)
        document = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
        raise CanaryError(f"{url}/docs.json gave no OpenAPI document: is this a BentoML service?")
    return document


def post_endpoints(document: dict) -> list[str]:
    """The paths the service answers with POST (BentoML's APIs), in the document's order."""
    return [path for path, item in document["paths"].items() if isinstance(item, dict) and "post" in item]


def _resolve(schema: object, document: dict, depth: int = 0) -> dict:
    """A schema with its $ref followed (within the document's components)."""
    while isinstance(schema, dict) and "$ref" in schema and depth < 32:
        ref = str(schema["$ref"])
        node: object = document
        for part in ref.removeprefix("#/").split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        schema, depth = node, depth + 1
    return schema if isinstance(schema, dict) else {}


def example_of(schema: object, document: dict, depth: int = 0) -> object:
    """A value the schema accepts: its own example where it gives one, else one made from its type and bounds."""
    schema = _resolve(schema, document)
    if depth > 12:
        return None
    for key in ("example", "default"):
        if key in schema:
            return schema[key]
    if isinstance(schema.get("examples"), list) and schema["examples"]:
        return schema["examples"][0]
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key, []) if _resolve(o, document).get("type") != "null"]
        if options:
            return example_of(options[0], document, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        required = schema.get("required", list(properties))
        return {name: example_of(properties[name], document, depth + 1) for name in required if name in properties}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [example_of(schema.get("items", {}), document, depth + 1) for _ in range(count)]
    if kind in ("number", "integer"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        value = (low + high) / 2 if low is not None and high is not None else (low + 1 if low is not None else 1)
        value = high - 1 if low is None and high is not None and high <= 1 else value
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return False
    if kind == "string":
        return "a" * max(1, int(schema.get("minLength", 1)))
    return None


def request_body(document: dict, path: str) -> dict | list | None:
    """A request body for POST `path`, from the service's OpenAPI schema (None: it documents none)."""
    operation = document["paths"].get(path, {}).get("post", {})
    content = operation.get("requestBody", {}).get("content", {})
    media = content.get("application/json")
    if not isinstance(media, dict):
        return None
    if "example" in media:
        return media["example"]
    body = example_of(media.get("schema", {}), document)
    return body if isinstance(body, (dict, list)) else None


@dataclass
class Answer:
    """One endpoint's answer to a request body: its status, and its JSON (None: not JSON)."""

    path: str
    body: object
    status: int
    answer: object = None


def ask(url: str, path: str, body: object) -> Answer:
    """POST `body` to `path` of the service at `url`."""
    try:
        response = httpx.post(f"{url}{path}", json=body, timeout=TIMEOUT, trust_env=False)
    except httpx.HTTPError as exc:
        raise CanaryError(f"{path}: the service did not answer ({exc})") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    return Answer(path, body, response.status_code, answer)


def json_body(text: str) -> object:
    """A request body given as JSON text."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CanaryError(f"an example request body must be JSON: {exc}") from None


def select(path: str, answer: object) -> list:
    """What the JSON path `path` finds in an answer (empty when nothing)."""
    return jsonpath.parse(path).select(answer) or []


def _sample(values: list) -> str:
    return ", ".join(json.dumps(v)[:40] for v in values[:3])


def fits(task: str, values: list) -> str | None:
    """Why predictions like `values` do not fit the task (None: they do). A classifier's are classes (strings,
    whole numbers, booleans); a regressor's are numbers."""
    if not values:
        return "it found no rows"
    if task == "regression":
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            return f'they are not numbers ({_sample(bad)}): is the task "classification"?'
        return None
    bad = [v for v in values if not isinstance(v, (str, bool, int, float)) or isinstance(v, float)]
    if bad:
        kind = "numbers" if all(isinstance(v, float) for v in bad) else "not classes"
        hint = ' is the task "regression"?' if kind == "numbers" else ""
        return f"they are {kind} ({_sample(bad)}):{hint}"
    return None


def check_answer(endpoint: Endpoint, task: str, answer: Answer) -> list[str]:
    """What is wrong with the endpoint's configured paths for this answer (empty: nothing)."""
    problems = []
    predictions = endpoint.path("predictions")
    found = None if predictions is None else predictions.select(answer.answer)
    if predictions is not None:
        if found is None:
            keys = ", ".join(answer.answer)[:80] if isinstance(answer.answer, dict) else type(answer.answer).__name__
            problems.append(f"{answer.path}: predictions = {predictions.text!r} finds nothing in its answer ({keys})")
        elif (why := fits(task, found)) is not None:
            problems.append(f"{answer.path}: the predictions at {predictions.text} do not fit task {task!r}: {why}")
    confidence = endpoint.path("confidence")
    if confidence is not None and found is not None:
        picked = confidence.select(answer.answer)
        if picked is None:
            problems.append(f"{answer.path}: confidence = {confidence.text!r} finds nothing in its answer")
    return problems


def check(url: str, endpoints: dict[str, Endpoint], task: str, who: str = "the service") -> None:
    """Refuse, in one line, a configuration that does not fit the service running at `url`."""
    document = openapi(url)
    offered = post_endpoints(document)
    missing = [path for path in endpoints if path not in offered]
    if missing:
        raise CanaryError(
            f"{who} has no endpoint {', '.join(missing)} (its endpoints: {', '.join(offered) or 'none'}); "
            "fix [tool.canary.endpoints]"
        )
    problems = []
    for path, endpoint in endpoints.items():
        if endpoint.predictions is None:
            continue
        body = json_body(endpoint.example) if endpoint.example else request_body(document, path)
        answer = ask(url, path, body)
        if answer.status != 200:
            origin = "its example" if endpoint.example else "a request made from its OpenAPI schema"
            problems.append(
                f"{path} answered {origin} with {answer.status}: set `example` in [tool.canary.endpoints.{path!r}]"
            )
            continue
        problems += check_answer(endpoint, task, answer)
    if problems:
        raise CanaryError(f"{who}: " + "; ".join(problems))
