"""Prometheus metrics, one registry per app (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


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
            buckets=SECONDS,
        )
        self.encode_seconds = Histogram(
            "shoplens_encode_seconds",
            "Query encoder forward pass time (one pass per micro-batch)",
            ["kind"],
            registry=self.registry,
            buckets=(0.0005, *SECONDS),
        )
        self.batch_size = Histogram(
            "shoplens_encode_batch_size",
            "Queries per encoder forward pass",
            ["kind"],
            registry=self.registry,
            buckets=BATCH_SIZES,
        )
        self.recommend_batch = Histogram(
            "shoplens_recommend_batch_size",
            "Customers per ranker pass (concurrent recommendation requests micro-batched)",
            registry=self.registry,
            buckets=BATCH_SIZES,
        )
        self.recommend_rank_seconds = Histogram(
            "shoplens_recommend_rank_seconds",
            "Ranker pass time (candidates, features, LightGBM; one pass per micro-batch)",
            registry=self.registry,
            buckets=(0.0005, *SECONDS),
        )
        self.index_size = Gauge(
            "shoplens_index_vectors", "Vectors in the served image index", registry=self.registry
        )
        self.ready = Gauge("shoplens_ready", "1 once the index is loaded", registry=self.registry)
        self.model_info = Gauge(
            "shoplens_model_info",
            "The served model (value 1): encoder spec, registered name, version and alias",
            ["encoder", "model", "version", "alias"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "shoplens_model_version",
            "Registered version of the served model (0 when not served from the registry)",
            registry=self.registry,
        )
        self.model_swaps = Counter(
            "shoplens_model_swaps_total",
            "Model versions swapped in while serving (alias changes picked up)",
            registry=self.registry,
        )
        self.events = Counter(
            "shoplens_events_total",
            "Customer events received, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.generate_seconds = Histogram(
            "shoplens_generate_seconds",
            "Image generation time (sampling only), by outcome",
            ["outcome"],
            registry=self.registry,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.generated_images = Counter(
            "shoplens_generated_images_total", "Images generated", registry=self.registry
        )

    def observe_generate(self, outcome: str, seconds: float, images: int) -> None:
        """One generation request: ``ok``, ``invalid`` or ``busy`` (no slot)."""
        self.generate_seconds.labels(outcome).observe(seconds)
        self.generated_images.inc(images)

    def observe_encode(self, kind: str, size: int, seconds: float) -> None:
        """One encoder forward pass of ``size`` queries that took ``seconds``."""
        self.encode_seconds.labels(kind).observe(seconds)
        self.batch_size.labels(kind).observe(size)

    def observe_recommend(self, size: int, seconds: float) -> None:
        """One ranker pass over ``size`` customers that took ``seconds``."""
        self.recommend_rank_seconds.observe(seconds)
        self.recommend_batch.observe(size)

    def set_model(self, encoder: str, model: str = "", version: str = "", alias: str = "") -> None:
        """Record the served model (the previous one's info series is removed)."""
        self.model_info.clear()
        self.model_info.labels(encoder, model, version, alias).set(1)
        self.model_version.set(float(version) if version.isdigit() else 0)
