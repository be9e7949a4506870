"""Per-version figures from each backend's Prometheus `/metrics` over a window: requests, errors and latency
(BentoML's own metrics), and what the model predicted (rows per class, mean confidence) when the service exports
the metrics `[tool.canary]` names (class_metric, confidence_metric).

A Snapshot holds the cumulative counters of one backend at one moment (`to_json`/`from_json`: its form in
baseline.json); the difference of two snapshots is that window's Figures (policy/evidence.py). Latency quantiles
are read from the histogram buckets as Prometheus' histogram_quantile() does (linear interpolation inside the
bucket).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

from prometheus_client.parser import text_string_to_metric_families

from canary_kit.core.endpoints import DURATION, ENDPOINT, REQUESTS, PredictionMetrics, asks_endpoint
from canary_kit.policy.evidence import Figures

NO_NAMES = PredictionMetrics()  # a service that exports no prediction metrics, on the default endpoint


@dataclass
class Snapshot:
    """Cumulative counts of one backend: requests by HTTP status, latency buckets {le: count}, and (when the
    service exports them) rows per predicted class and the sum and count of the rows' confidence."""

    by_status: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)
    taken_at: float = 0.0
    classes: dict[str, float] = field(default_factory=dict)
    confidence: tuple[float, float] | None = None  # (sum, count) of the top-class probabilities

    @classmethod
    def parse(cls, text: str, names: PredictionMetrics = NO_NAMES, endpoint: str | None = None) -> Snapshot:
        endpoints = names.endpoints if endpoint is None else (endpoint,)
        snap = cls(taken_at=time.time())
        confidence: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name == names.class_metric:
                for sample in family.samples:
                    if sample.name.endswith("_total") and "class" in sample.labels:
                        name = sample.labels["class"]
                        snap.classes[name] = snap.classes.get(name, 0.0) + sample.value
                continue
            if family.name == names.confidence_metric:
                for sample in family.samples:
                    for part in ("_sum", "_count"):
                        if sample.name == family.name + part:
                            confidence[part] = confidence.get(part, 0.0) + sample.value
                continue
            for sample in family.samples:
                if sample.labels.get("endpoint") not in endpoints:
                    continue
                if family.name == REQUESTS and sample.name.endswith("_total"):
                    code = sample.labels["http_response_code"]
                    snap.by_status[code] = snap.by_status.get(code, 0.0) + sample.value
                elif family.name == DURATION and sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    snap.buckets[le] = snap.buckets.get(le, 0.0) + sample.value
        if len(confidence) == 2:
            snap.confidence = (confidence["_sum"], confidence["_count"])
        return snap

    def to_json(self) -> dict:
        data = {
            "by_status": self.by_status,
            "buckets": {str(k): v for k, v in self.buckets.items()},
            "taken_at": self.taken_at,
        }
        if self.classes:
            data["classes"] = self.classes
        if self.confidence is not None:
            data["confidence"] = list(self.confidence)
        return data

    @classmethod
    def from_json(cls, data: dict) -> Snapshot:
        buckets = {float(k): v for k, v in data.get("buckets", {}).items()}
        confidence = data.get("confidence")
        return cls(
            dict(data.get("by_status", {})),
            buckets,
            data.get("taken_at", 0.0),
            dict(data.get("classes", {})),
            None if confidence is None else (float(confidence[0]), float(confidence[1])),
        )


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative buckets {upper bound: count}; None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bound: report that bound, as Prometheus does
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = upper, count
    return lower


def window(before: Snapshot | None, after: Snapshot) -> Figures:
    """What happened between two snapshots (a restarted backend, any of whose counters fell, counts from zero)."""
    before = before or Snapshot(taken_at=after.taken_at)
    pairs: list[tuple[dict, dict]] = [
        (after.by_status, before.by_status),
        (after.buckets, before.buckets),
        (after.classes, before.classes),
    ]
    if any(now.get(key, 0.0) < then for now, old in pairs for key, then in old.items()):
        before = Snapshot(taken_at=before.taken_at)
    by_status = {code: n - before.by_status.get(code, 0.0) for code, n in after.by_status.items()}
    buckets = {le: n - before.buckets.get(le, 0.0) for le, n in after.buckets.items()}
    requests = int(round(sum(by_status.values())))
    errors = int(round(sum(n for code, n in by_status.items() if code.startswith("5"))))
    p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
    class_rows = rows = mean = None
    if after.classes:
        class_rows = {name: int(round(n - before.classes.get(name, 0.0))) for name, n in sorted(after.classes.items())}
        rows = sum(class_rows.values())
    if after.confidence is not None:
        total, count = after.confidence
        if before.confidence is not None and before.confidence[1] <= count:
            total, count = total - before.confidence[0], count - before.confidence[1]
        mean = round(total / count, 6) if count > 0 else None
    return Figures(
        requests=requests,
        errors=errors,
        error_rate=(errors / requests) if requests else None,
        p50_ms=None if p50 is None else round(p50 * 1000, 2),
        p99_ms=None if p99 is None else round(p99 * 1000, 2),
        seconds=round(after.taken_at - before.taken_at, 1),
        rows=rows,
        class_rows=class_rows,
        confidence_mean=mean,
    )


def figures_between(before: Snapshot | None, after: Snapshot | None) -> Figures | None:
    """`window` for two snapshots that may be missing (None when the backend did not answer at the end)."""
    return None if after is None else window(before, after)


def unpinned_split(
    entries: list[dict], versions: dict[str, str | None], endpoints: tuple[str, ...] = (ENDPOINT,)
) -> dict[str, int]:
    """Unpinned answers of the model's endpoints by color, from nginx's access log: what the weighted draw sent
    where (pinned requests, shadow copies, and answers from neither version, such as a shed 503, are left out)."""
    color = {version: name for name, version in versions.items() if version}
    counts = {name: 0 for name in versions}
    for entry in entries:
        if entry.get("shadow") or entry.get("pin") or not asks_endpoint(entry, endpoints):
            continue
        name = color.get(str(entry.get("version")))
        if name is not None:
            counts[name] += 1
    return counts


def _tries(entry: dict) -> list[list[tuple[str, str, str]]]:
    """An entry's tries of a backend, per upstream nginx went through (the one routed to, then @failover's): each
    try's address, status and seconds (nginx logs them with ", " between tries and " : " between upstreams)."""
    keys = ("upstream", "upstream_status", "upstream_response_time")
    groups = [str(entry.get(key) or "").split(" : ") for key in keys]
    return [
        list(zip(address.split(", "), status.split(", "), seconds.split(", ")))
        for address, status, seconds in zip(*groups)
    ]


def split_tries(
    entries: list[dict], endpoints: tuple[str, ...] = (ENDPOINT,)
) -> dict[str, list[tuple[bool, float | None]]]:
    """Each color's tries over the split's traffic, from nginx's access log (BentoML's /metrics count pinned requests
    too, and cannot tell them apart): the tries of the model's endpoints that reached a version's server,
    for live requests that were not pinned. A try in the upstream the request was routed to is that version's; one in
    @failover's is the other version's; a version at its cap reached no server (shed), and a kept-alive connection
    the server had closed, tried again at once on the same server, is not counted. Each try: whether it got a 5xx
    or no answer (nginx's 502/504), and its time to the last byte (nginx's upstream_response_time; None: none)."""
    tries: dict[str, list[tuple[bool, float | None]]] = {"blue": [], "green": []}
    other = {"blue": "green", "green": "blue"}
    for entry in entries:
        routed = entry.get("route")
        if entry.get("shadow") or entry.get("pin") or routed not in tries or not asks_endpoint(entry, endpoints):
            continue
        for color, group in zip((routed, other[routed]), _tries(entry)):
            for at, (address, status, seconds) in enumerate(group):
                if ":" not in address or not status.isdigit():
                    continue
                if at + 1 < len(group) and group[at + 1][0] == address:
                    continue  # a kept-alive connection the server had closed, tried again: nginx's, not the version's
                took = float(seconds) if seconds.replace(".", "", 1).isdigit() else None
                tries[color].append((int(status) >= 500, took))
    return tries


@dataclass(frozen=True)
class Http:
    """A version's HTTP figures from its tries: the tries, their 5xx, their share, p50 and p99 (nearest rank). Its
    fields are Figures' of the same names (with_split_http puts them in place of the /metrics ones)."""

    requests: int
    errors: int
    error_rate: float | None
    p50_ms: float | None
    p99_ms: float | None


def split_http(entries: list[dict], endpoints: tuple[str, ...] = (ENDPOINT,)) -> dict[str, Http]:
    """split_tries' figures, by color."""
    return {color: http_figures(found) for color, found in split_tries(entries, endpoints).items()}


def http_figures(tries: list[tuple[bool, float | None]]) -> Http:
    """A version's HTTP figures from its tries."""
    times = sorted(t for _, t in tries if t is not None)
    errors = sum(failed for failed, _ in tries)

    def rank(q: float) -> float | None:  # the nearest-rank quantile, in ms
        return round(1000 * times[max(0, math.ceil(q * len(times)) - 1)], 2) if times else None

    return Http(len(tries), errors, errors / len(tries) if tries else None, rank(0.5), rank(0.99))


def with_split_http(figures: Figures | None, http: Http) -> Figures | None:
    """A version's window figures (from its /metrics) with the HTTP ones taken over the split's traffic instead."""
    return None if figures is None else replace(figures, **asdict(http))
