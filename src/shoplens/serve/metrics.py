"""Prometheus metrics, one registry per app (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "shoplens_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "shoplens_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.search_seconds = Histogram(
            "shoplens_search_seconds",
            "Search time (encode + ANN + rerank)",
            ["kind"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.index_size = Gauge(
            "shoplens_index_vectors", "Vectors in the served image index", registry=self.registry
        )
        self.ready = Gauge("shoplens_ready", "1 once the index is loaded", registry=self.registry)
        self.events = Counter(
            "shoplens_events_total",
            "Customer events received, by outcome",
            ["outcome"],
            registry=self.registry,
        )
