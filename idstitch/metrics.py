"""In-process counters and latency histograms, exposed by `/metrics` in Prometheus format."""

from __future__ import annotations

import bisect
import threading
from collections import Counter

# Upper bounds in seconds, from 100 microseconds to 10 seconds.
BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = BUCKETS):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out = []
        running = 0
        sep = "," if labels else ""
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {running}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        suffix = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{suffix} {self.total}")
        out.append(f"{name}_count{suffix} {self.n}")
        return out


class Metrics:
    """Counters the engine updates after each commit (one lock, taken once per batch)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events = 0
        self.duplicates = 0
        self.unresolved = 0
        self.created = 0
        self.merges = 0
        self.commits = 0
        self.violations: Counter[str] = Counter()
        self.commit_seconds = Histogram()
        self.batch_sizes = Histogram((1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000))
