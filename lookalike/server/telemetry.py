"""Request metrics in the Prometheus text exposition format (version 0.0.4), written by hand.

Three families, plus a few of the server's own: a counter of requests by method, route template and
status; a latency histogram by route with fixed buckets; a gauge of the number of indexed images.
Routes are the app's templates (``/thumbs/{id}``), never raw paths, so the number of series is bounded.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def escape_label(value: str) -> str:
    """A label value escaped as the text format asks (backslash, double quote, line feed)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # per bucket (not cumulative); the last is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        i = 0
        while i < len(self.buckets) and value > self.buckets[i]:
            i += 1
        self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = []
        running = 0
        for bound, n in zip((*self.buckets, math.inf), self.counts):
            running += n
            out.append(f'{name}_bucket{{{labels}{sep}le="{_num(bound)}"}} {running}')
        brace = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{brace} {_num(self.sum)}")
        out.append(f"{name}_count{brace} {self.count}")
        return out


class Metrics:
    """Thread-safe counters and histograms; :meth:`render` writes the exposition text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._latency: dict[str, _Histogram] = {}
        self._batches = _Histogram(BATCH_BUCKETS)
        self._searches: dict[str, int] = defaultdict(int)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, route, str(status))] += 1
            hist = self._latency.get(route)
            if hist is None:
                hist = self._latency[route] = _Histogram(LATENCY_BUCKETS)
            hist.observe(seconds)

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self._batches.observe(size)

    def count_search(self, kind: str) -> None:
        with self._lock:
            self._searches[kind] += 1

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The exposition text; ``gauges`` maps a metric name to (help text, value)."""
        lines: list[str] = []
        with self._lock:
            lines += [
                "# HELP lookalike_http_requests_total HTTP requests answered, by method, route and status.",
                "# TYPE lookalike_http_requests_total counter",
            ]
            for (method, route, status), n in sorted(self._requests.items()):
                labels = f'method="{escape_label(method)}",route="{escape_label(route)}",status="{status}"'
                lines.append(f"lookalike_http_requests_total{{{labels}}} {n}")
            lines += [
                "# HELP lookalike_http_request_duration_seconds Time from request to the end of the response.",
                "# TYPE lookalike_http_request_duration_seconds histogram",
            ]
            for route, hist in sorted(self._latency.items()):
                lines += hist.lines("lookalike_http_request_duration_seconds", f'route="{escape_label(route)}"')
            lines += [
                "# HELP lookalike_searches_total Searches run, by kind of query (upload or id).",
                "# TYPE lookalike_searches_total counter",
            ]
            for kind, n in sorted(self._searches.items()):
                lines.append(f'lookalike_searches_total{{kind="{escape_label(kind)}"}} {n}')
            lines += [
                "# HELP lookalike_search_batch_size Queries answered together by one call of the index.",
                "# TYPE lookalike_search_batch_size histogram",
            ]
            lines += self._batches.lines("lookalike_search_batch_size", "")
        for name, (help_text, value) in gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_num(value)}"]
        return "\n".join(lines) + "\n"
