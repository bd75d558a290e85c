"""Prometheus metrics of one server process (own registry: two apps in one process never collide).

Counters and histograms for requests (by route template, method, status), latencies, batch sizes
(requests and rows per forward), forward time, ingested items; gauges for the table size and the
loaded versions (``mmrank_bundle_info``, labelled with encoder, strategy and model versions) and
the device the models run on (``mmrank_device_info``, labelled with it, e.g. ``cuda:0 (NVIDIA H100 ...)``).
With ``--workers N`` each worker keeps its own figures (a scrape sees the worker that answers it).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("mmrank_requests_total", "HTTP requests", ["route", "method", "status"],
                                registry=r)
        self.latency = Histogram("mmrank_request_seconds", "HTTP request latency", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_requests = Histogram("mmrank_batch_requests", "rank requests per forward",
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.batch_rows = Histogram("mmrank_batch_rows", "candidate rows per forward",
                                    buckets=(1, 10, 50, 100, 200, 500, 1000, 2000, 4000, 8000), registry=r)
        self.forward = Histogram("mmrank_forward_seconds", "build + forward time of one batch",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.rerank_batch_lists = Histogram("mmrank_rerank_batch_lists", "/v1/rerank lists per forward",
                                            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.rerank_forward = Histogram("mmrank_rerank_forward_seconds", "build + forward time of one "
                                        "/v1/rerank batch", buckets=LATENCY_BUCKETS, registry=r)
        self.ingested = Counter("mmrank_items_ingested_total", "items posted to /v1/items", registry=r)
        self.table_items = Gauge("mmrank_table_items", "items in the embedding table", registry=r)
        self.bundle_info = Gauge("mmrank_bundle_info", "the loaded bundle (value 1)",
                                 ["encoder_version", "strategy", "model_version", "rerank"], registry=r)
        self.device_info = Gauge("mmrank_device_info", "the device the bundle's models run on (value 1)",
                                 ["device"], registry=r)
        self.swaps = Counter("mmrank_bundle_swaps_total", "bundles swapped in", registry=r)
        self.bundle_loaded = False   # a later set_bundle is a swap
        self.refused = Counter("mmrank_refused_total", "requests refused before they started (503: the "
                               "endpoint's queue is full or its deadline cannot be met; 429: over the "
                               "client's rate)", ["route", "reason"], registry=r)

    def request(self, scope: dict, method: str, status: int, seconds: float, route: str | None = None) -> None:
        route = route or getattr(scope.get("route"), "path", None) or "unmatched"
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def batch(self, n_requests: int, n_rows: int, seconds: float) -> None:
        self.batch_requests.observe(n_requests)
        self.batch_rows.observe(n_rows)
        self.forward.observe(seconds)

    def rerank_batch(self, n_lists: int, n_rows: int, seconds: float) -> None:
        self.rerank_batch_lists.observe(n_lists)
        self.rerank_forward.observe(seconds)

    def set_bundle(self, bundle) -> None:  # noqa: ANN001
        if self.bundle_loaded:
            self.swaps.inc()
        self.bundle_loaded = True
        self.bundle_info.clear()
        self.bundle_info.labels(bundle.encoder_version, bundle.strategy, bundle.model_version,
                                "yes" if bundle.reranker is not None else "no").set(1)
        self.table_items.set(len(bundle.store))
        self.device_info.clear()
        self.device_info.labels(bundle.device_name).set(1)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
