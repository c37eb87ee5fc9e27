"""Prometheus metrics of one service: requests, latency, batch sizes, errors by kind.

Each app has its own ``CollectorRegistry`` (not the process-global one), so several apps can live
in one process (tests) and ``/metrics`` shows exactly this service. Paths are labelled by route
template, never by the raw URL, so a scanner cannot blow up the label space.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("emoclip_http_requests", "HTTP requests answered, by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("emoclip_http_request_seconds", "Time from request to response, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_images = Histogram("emoclip_batch_images", "Images per encoder batch (micro-batching)",
                                      buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("emoclip_batch_seconds", "Time to decode, encode and classify one batch",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter("emoclip_images", "Uploaded images, by outcome (tagged or an error kind)",
                              ["outcome"], registry=self.registry)
        self.errors = Counter("emoclip_errors", "Refused or failed requests and images, by kind",
                              ["kind"], registry=self.registry)
        self.queued = Gauge("emoclip_queue_images", "Images waiting for the model", registry=self.registry)

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_images.observe(images)
        self.batch_seconds.observe(seconds)
