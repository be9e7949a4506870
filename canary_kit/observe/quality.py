"""`canary quality`: the labelled answers in the ledger, per version, with their intervals, since a moment the
user names (`--since`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from canary_kit.core.errors import CanaryError
from canary_kit.core.target import Target
from canary_kit.observe.ledger import catch_up, connect, utc
from canary_kit.observe.ledger_queries import counts, errors, quality
from canary_kit.policy.stats import Errors


def since_time(text: str | None, last_change: str | None, now: datetime | None = None) -> str | None:
    """`--since`: an ISO time, a duration back from now (30m, 2h, 7d), or `change` (the last change); None: all."""
    if text is None:
        return None
    if text == "change":
        if last_change is None:
            raise CanaryError("--since change: no change recorded yet")
        return utc(last_change)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        try:
            moment = (now or datetime.now(UTC)) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
        except OverflowError:
            return "0001-01-01T00:00:00"  # further back than any answer: all of them
        return moment.strftime("%Y-%m-%dT%H:%M:%S")
    found = utc(text)
    if found is None:
        raise CanaryError(f"--since wants an ISO time, a duration such as 30m, 2h or 7d, or `change`; got {text!r}")
    return found


def quality_report(target: Target, versions: dict[str, str | None], since: str | None) -> dict:
    """`canary quality`: per version with labels (blue and green first), labelled rows and, for a classifier, accuracy
    with its 95% Wilson interval and the confusion matrix, green - blue with its 95% interval; for a regressor, MAE
    and RMSE with their 95% intervals, and green's MAE over blue's with its interval."""
    from canary_kit.policy.stats import difference, error_increase, wilson

    regression = target.prediction_metrics.task == "regression"
    with connect(target.state_dir) as conn:
        catch_up(target, conn, target.retention)
        listed = [v for v in versions.values() if v]
        others = [v for (v,) in conn.execute("SELECT DISTINCT version FROM answers") if v not in listed]
        found = quality(conn, listed + sorted(others), since)
        found_errors = errors(conn, listed + sorted(others), since) if regression else {}
        totals = counts(conn)
    role = {v: color for color, v in versions.items() if v}
    rows = []
    for version, q in found.items():
        e = found_errors.get(version, Errors())
        labelled = e.n if regression else q.labelled
        if not labelled and version not in role:
            continue
        row: dict = {"version": version, "role": role.get(version, ""), "labelled": labelled}
        if regression:
            mae, rmse = e.mae_interval(), e.rmse_interval()
            row |= {
                "mae": e.mae,
                "mae_interval": None if mae is None else list(mae),
                "rmse": e.rmse,
                "rmse_interval": None if rmse is None else list(rmse),
            }
        else:
            bounds = wilson(q.correct, q.labelled)
            row |= {
                "correct": q.correct,
                "accuracy": q.accuracy,
                "interval": None if bounds is None else list(bounds),
                "confusion": q.confusion,
            }
        rows.append(row)
    blue_version, green_version = versions.get("blue") or "", versions.get("green") or ""
    if regression:
        increase = error_increase(found_errors.get(green_version, Errors()), found_errors.get(blue_version, Errors()))
        compared = {"green_over_blue_mae": None if increase is None else list(increase)}
    else:
        blue, green = found.get(blue_version), found.get(green_version)
        diff = difference(green.correct, green.labelled, blue.correct, blue.labelled) if blue and green else None
        compared = {"green_minus_blue": None if diff is None else list(diff)}
    task = "regression" if regression else "classification"
    return {"since": since, "task": task, "versions": rows, **compared, **totals}
