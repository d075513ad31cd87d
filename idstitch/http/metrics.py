"""`/metrics` in Prometheus text format: the engine's counters plus HTTP latency.

Counters only grow; Prometheus derives rates from them. `idstitch_events_per_second` is
also given directly, over the last ten seconds, for dashboards without a query language.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

from idstitch.metrics import Histogram, Metrics
from idstitch.storage.base import IndexLag


class RateMeter:
    """Events per second over a sliding window, from periodic samples of a counter."""

    def __init__(self, window: float = 10.0):
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, count: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._samples.append((now, count))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


class HttpMetrics:
    """Latency and status counts per route. Only the event loop thread writes here."""

    def __init__(self) -> None:
        self.latency: dict[str, Histogram] = {}
        self.responses: Counter[tuple[str, int]] = Counter()
        self.events = RateMeter()

    def observe(self, route: str, status: int, seconds: float) -> None:
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = Histogram()
        histogram.observe(seconds)
        self.responses[route, status] += 1


def _metric(out: list[str], name: str, kind: str, help_: str) -> None:
    out.append(f"# HELP {name} {help_}")
    out.append(f"# TYPE {name} {kind}")


def render(
    engine: Metrics,
    http: HttpMetrics,
    lag: IndexLag | None = None,
    blocked: int | None = None,
    feeds: list[dict[str, Any]] | None = None,
) -> str:
    out: list[str] = []
    with engine.lock:
        events, duplicates = engine.events, engine.duplicates
        counters = [
            (
                "idstitch_events_total",
                "Messages acknowledged (stored, or recognised as duplicates).",
                events,
            ),
            (
                "idstitch_duplicates_total",
                "Messages acknowledged as already processed.",
                duplicates,
            ),
            (
                "idstitch_resolutions_total",
                "Messages resolved (not duplicates).",
                events - duplicates,
            ),
            ("idstitch_unresolved_total", "Messages stored without a profile.", engine.unresolved),
            ("idstitch_profiles_created_total", "Profiles created.", engine.created),
            ("idstitch_merges_total", "Profiles merged into another.", engine.merges),
            (
                "idstitch_commits_total",
                "Store transactions committed (group commits).",
                engine.commits,
            ),
        ]
        violations = sorted(engine.violations.items())
        commit = engine.commit_seconds.lines("idstitch_commit_duration_seconds")
        batch = engine.batch_sizes.lines("idstitch_commit_batch_messages")
    for name, help_, value in counters:
        _metric(out, name, "counter", help_)
        out.append(f"{name} {value}")
    _metric(
        out,
        "idstitch_events_per_second",
        "gauge",
        "Messages acknowledged per second over the last ten seconds.",
    )
    out.append(f"idstitch_events_per_second {http.events.rate():.3f}")
    if lag is not None:  # None: the store could not say (and /healthz is 503)
        _metric(
            out,
            "idstitch_index_lag_messages",
            "gauge",
            "Acknowledged messages not yet in the derived index (reads cover them from the log).",
        )
        out.append(f"idstitch_index_lag_messages {lag.messages}")
        _metric(
            out,
            "idstitch_index_lag_seconds",
            "gauge",
            "Age of the oldest acknowledged message not yet in the derived index.",
        )
        out.append(f"idstitch_index_lag_seconds {lag.seconds:.3f}")
    if blocked is not None:
        _metric(
            out,
            "idstitch_blocked_identifiers",
            "gauge",
            "Identifiers on the stored block list (named junk by an unmerge): they link nothing.",
        )
        out.append(f"idstitch_blocked_identifiers {blocked}")
    if feeds:
        _webhook_lines(out, feeds)
    _metric(out, "idstitch_violations_total", "counter", "Identifiers or merges refused, by rule.")
    out.extend(f'idstitch_violations_total{{rule="{rule}"}} {n}' for rule, n in violations)
    _metric(
        out,
        "idstitch_commit_duration_seconds",
        "histogram",
        "Time to resolve and durably commit one group of messages.",
    )
    out.extend(commit)
    _metric(out, "idstitch_commit_batch_messages", "histogram", "Messages per group commit.")
    out.extend(batch)
    _metric(out, "idstitch_http_requests_total", "counter", "HTTP responses by route and status.")
    out.extend(
        f'idstitch_http_requests_total{{route="{route}",status="{status}"}} {n}'
        for (route, status), n in sorted(http.responses.items())
    )
    _metric(
        out,
        "idstitch_http_request_duration_seconds",
        "histogram",
        "Time from request start to response, by route.",
    )
    for route in sorted(http.latency):
        out.extend(
            http.latency[route].lines("idstitch_http_request_duration_seconds", f'route="{route}"')
        )
    return "\n".join(out) + "\n"


def _webhook_lines(out: list[str], feeds: list[dict[str, Any]]) -> None:
    series = [
        ("idstitch_webhook_backlog", "gauge", "backlog",
         "Messages' changes stored and not yet delivered to the webhook."),
        ("idstitch_webhook_deliveries_total", "counter", "delivered",
         "Changes this process delivered to the webhook."),
        ("idstitch_webhook_failures_total", "counter", "failed",
         "Deliveries to the webhook that failed (each is retried)."),
        ("idstitch_webhook_last_success_timestamp_seconds", "gauge", "last_success",
         "When this process last delivered to the webhook (Unix time; 0: not yet)."),
    ]  # fmt: skip
    for name, kind, key, help_ in series:
        _metric(out, name, kind, help_)
        for feed in feeds:
            labels = f'webhook="{feed["name"]}",host="{_label(feed["host"])}"'
            out.append(f"{name}{{{labels}}} {feed[key]}")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
