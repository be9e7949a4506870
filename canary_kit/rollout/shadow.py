"""Shadow mode: blue answers every client while nginx mirrors each /predict to green; then compare the two.

nginx logs both answers to one request under the same request id (the live one, marked `"mirrored": "on"`, and
green's answer to the copy, marked `"shadow": true` and logged by nginx's relay when green answers, after the live
one), each with the predictions nginx read in it (answers.py). Pairing them gives the agreement of the two models
on real traffic (a classifier's) or how far apart their numbers are (a regressor's), the shift in predicted class
shares, and the latency difference, before any user sees green. Predictions have no side effects, which is what
makes mirroring them safe.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable

from canary_kit.core.endpoints import ENDPOINT, asks_endpoint
from canary_kit.core.errors import CanaryError
from canary_kit.core.routing import RoutingState
from canary_kit.core.target import LogMark, Target
from canary_kit.observe.answers import predictions
from canary_kit.policy.stats import ks_distance, wilson
from canary_kit.steer.control import current, require_green, set_weight

COPY_TIMEOUT = 6.5  # the shadow relay's timeouts for green and its observer (canary-internal.inc.template)


def _ms(entry: dict) -> float | None:
    try:
        return float(entry["upstream_response_time"].split(",")[-1]) * 1000
    except (KeyError, ValueError):
        return None


def compare(
    entries: list[dict],
    blue_version: str | None,
    endpoints: tuple[str, ...] = (ENDPOINT,),
    task: str = "classification",
) -> dict:
    """Pair blue's live answers with green's mirrored ones by request id; compare their predictions row by row.

    Live answers that did not come from blue (a pinned request, or blue failing over to green) are left out.
    """
    live = {
        e["request_id"]: e
        for e in entries
        if not e.get("shadow") and asks_endpoint(e, endpoints) and e.get("version") == blue_version
    }
    copies = {e["request_id"]: e for e in entries if e.get("shadow")}
    mirrored = [rid for rid in live if rid in copies]
    failed_copies = sum(1 for rid in mirrored if copies[rid]["upstream_status"] != "200")
    pairs = []
    for rid in mirrored:
        if live[rid]["status"] != 200 or copies[rid]["upstream_status"] != "200":
            continue
        blue_rows, green_rows = predictions(live[rid], task), predictions(copies[rid], task)
        if blue_rows is not None and green_rows is not None and len(blue_rows) == len(green_rows):
            pairs.append((blue_rows, green_rows))
    if task == "regression":
        return _numbers(pairs, live, copies, mirrored, failed_copies)
    rows = [(b.predicted, g.predicted) for blue, green in pairs for b, g in zip(blue, green)]
    shares = {}
    for side, index in (("blue", 0), ("green", 1)):
        counts = Counter(row[index] for row in rows)
        shares[side] = {cls: round(n / len(rows), 4) for cls, n in sorted(counts.items())} if rows else {}
    classes = sorted(set(shares["blue"]) | set(shares["green"]))
    flips: dict[str, dict[str, int]] = {}  # blue's class -> green's class -> rows, where they differ
    for (b, g), n in sorted(Counter(rows).items()):
        if b != g:
            flips.setdefault(b, {})[g] = n
    agreed = sum(b == g for b, g in rows)
    bounds = wilson(agreed, len(rows))
    blue_ms = [m for rid in mirrored if (m := _ms(live[rid])) is not None]
    green_ms = [m for rid in mirrored if (m := _ms(copies[rid])) is not None]
    median = lambda xs: round(statistics.median(xs), 2) if xs else None  # noqa: E731
    return {
        "requests_live": len(live),
        "requests_mirrored": len(mirrored),
        "green_failed_copies": failed_copies,
        "rows_compared": len(rows),
        "rows_agreed": agreed,
        "agreement": round(agreed / len(rows), 4) if rows else None,
        "agreement_95": None if bounds is None else [round(bounds[0], 4), round(bounds[1], 4)],
        "flips": flips,
        "class_shares": shares,
        "share_shift": {c: round(shares["green"].get(c, 0) - shares["blue"].get(c, 0), 4) for c in classes},
        "latency_p50_ms": {"blue": median(blue_ms), "green": median(green_ms)},
    }


def _numbers(pairs: list, live: dict, copies: dict, mirrored: list[str], failed_copies: int) -> dict:
    """A regressor's shadow comparison: how far green's numbers are from blue's on the same rows."""
    values = [(b.value, g.value) for blue, green in pairs for b, g in zip(blue, green)]
    numbers = [(b, g) for b, g in values if b is not None and g is not None]
    blue_ms = [m for rid in mirrored if (m := _ms(live[rid])) is not None]
    green_ms = [m for rid in mirrored if (m := _ms(copies[rid])) is not None]
    median = lambda xs: round(statistics.median(xs), 2) if xs else None  # noqa: E731
    distance = ks_distance([b for b, _ in numbers], [g for _, g in numbers])
    return {
        "requests_live": len(live),
        "requests_mirrored": len(mirrored),
        "green_failed_copies": failed_copies,
        "rows_compared": len(numbers),
        "rows_agreed": 0,
        "agreement": None,
        "mean_abs_difference": round(statistics.fmean(abs(b - g) for b, g in numbers), 6) if numbers else None,
        "mean_difference": round(statistics.fmean(g - b for b, g in numbers), 6) if numbers else None,
        "ks_distance": None if distance is None else round(distance, 4),
        "latency_p50_ms": {"blue": median(blue_ms), "green": median(green_ms)},
    }


def require_shadowable(state: RoutingState) -> None:
    """Shadow needs a green, and sends every client to blue: not after a promote, when green serves everyone."""
    require_green(state)
    if state.green_weight == 100:
        raise CanaryError(
            f"green ({state.green_version}) has 100% after a promote: shadow would send everyone back to blue; "
            "`canary finalize` first (or `canary rollback`)"
        )


def run_shadow(
    target: Target, seconds: float, echo: Callable[[str], None], decided: Callable[[dict], bool] | None = None
) -> dict:
    """Mirror for `seconds` with green at 0%, then restore the weight it had and compare what was logged. With
    `decided`, the comparison so far is asked every few seconds and the phase ends as soon as it says so (a
    sequential agreement gate with a verdict)."""
    previous = current(target)
    require_shadowable(previous)
    mark = target.log_mark()
    model = target.prediction_metrics
    _, mirroring = set_weight(
        target, 0, reason=f"shadow for {seconds:.0f}s", shadow=True, expect=previous.serial, event="shadow"
    )
    try:
        started = time.monotonic()
        while (left := seconds - (time.monotonic() - started)) > 0:
            time.sleep(min(2.0 if decided else 5.0, left))
            if decided is not None and decided(
                compare(target.log_since(mark), previous.blue_version, model.endpoints, model.task)
            ):
                echo(f"  shadow: decided after {time.monotonic() - started:.0f}s")
                break
            echo(f"  shadow: {max(0.0, seconds - (time.monotonic() - started)):4.0f}s left")
    finally:
        # back to the weight it had, unless an operator changed the split meanwhile (then theirs stands)
        set_weight(target, previous.green_weight, reason="shadow done", expect=mirroring.serial, event="shadow")
    return compare(settled_log(target, mark, model.endpoints), target.serving("blue"), model.endpoints, model.task)


def settled_log(target: Target, mark: LogMark, endpoints: tuple[str, ...] = (ENDPOINT,)) -> list[dict]:
    """The log since `mark` once green has answered the copy of every mirrored request (its answers come after the
    live ones), or once the relay has stopped waiting for green."""
    deadline = time.monotonic() + COPY_TIMEOUT
    while True:
        entries = target.log_since(mark)
        copied = {e["request_id"] for e in entries if e.get("shadow")}
        waiting = [
            e
            for e in entries
            if e.get("mirrored") == "on"
            and e.get("status") == 200
            and asks_endpoint(e, endpoints)
            and e["request_id"] not in copied
        ]
        if not waiting or time.monotonic() > deadline:
            return entries
        time.sleep(0.25)
