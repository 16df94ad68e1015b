"""Prometheus metrics, one registry per application so tests can build many apps.

Request counts and latencies are kept in plain per-route accumulators and turned into
Prometheus families only when ``/metrics`` is scraped: prometheus-client's ``Counter.inc``
and ``Histogram.observe`` take a lock each and search the buckets in Python, ~3 % of the
CPU of a polled ``GET /v1/operations/{id}`` (py-spy). The event loop is the only writer,
so no lock is needed; the exposition is the same.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Latency:
    """One route's histogram: counts per bucket (the last is +Inf) and the sum."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.total = 0.0


class _RequestCollector(Collector):
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        self.latency: dict[tuple[str, str], _Latency] = {}

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "alto_http_requests",
            "HTTP requests served, by route template and status.",
            labels=["method", "route", "status"],
        )
        for key, count in sorted(self.counts.items()):
            requests.add_metric(list(key), count)
        yield requests
        latency = HistogramMetricFamily(
            "alto_http_request_duration_seconds",
            "HTTP request latency by route template.",
            labels=["method", "route"],
        )
        for labels, hist in sorted(self.latency.items()):
            cumulative, running = [], 0
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), hist.buckets, strict=True):
                running += count
                cumulative.append((bound, running))
            latency.add_metric(list(labels), cumulative, hist.total)
        yield latency


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = _RequestCollector()
        self.registry.register(self._requests)
        self.operations = Gauge(
            "alto_operations",
            "Operations in the database by state.",
            ["state"],
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        counts = self._requests.counts
        key = (method, route, str(status))
        counts[key] = counts.get(key, 0) + 1
        hist = self._requests.latency.get((method, route))
        if hist is None:
            hist = self._requests.latency.setdefault((method, route), _Latency())
        hist.buckets[bisect_left(BUCKETS, seconds)] += 1
        hist.total += seconds

    def set_operations(self, counts: dict[str, int]) -> None:
        for state in ("pending", "running", "succeeded", "failed"):
            self.operations.labels(state).set(counts.get(state, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
