"""Prometheus metrics of one service: requests, latency, batch sizes, errors by kind, and the
process (CPU, memory), the connections, the queue and the caches.

Each app has its own ``CollectorRegistry`` (not the process-global one), so several apps can live
in one process (tests) and ``/metrics`` shows exactly this service. Every label set is bounded:
paths are labelled by route template, never by the raw URL, and methods outside the standard
ones collapse into ``OTHER``, so a scanner cannot blow up the label space.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})


def method_label(method: str) -> str:
    """The method as a metric label: one of the standard ones, or ``OTHER`` (a bounded set)."""
    return method if method in KNOWN_METHODS else "OTHER"


class LiveCollector(Collector):
    """Values read when ``/metrics`` is scraped (queue, connections, caches): ``reads`` returns
    ``{(name, help, kind, labels-tuple or None): value}`` with kind ``gauge`` or ``counter``."""

    def __init__(self, reads: Callable[[], dict]) -> None:
        self.reads = reads

    def collect(self) -> Iterator:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for (name, doc, kind, labels), value in self.reads().items():
            family = families.get(name)
            if family is None:
                label_names = [k for k, _ in labels] if labels else []
                make = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
                family = families[name] = make(name, doc, labels=label_names)
            family.add_metric([v for _, v in labels] if labels else [], value)
        yield from families.values()

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
        self.in_flight = Gauge("emoclip_requests_in_flight", "Requests being read, queued or answered (not probes)",
                               registry=self.registry)
        self.over_capacity = Counter("emoclip_over_capacity", "Requests refused with 503 + Retry-After, by reason",
                                     ["reason"], registry=self.registry)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, fds

    def add_live(self, reads: Callable[[], dict]) -> None:
        self.registry.register(LiveCollector(reads))

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_images.observe(images)
        self.batch_seconds.observe(seconds)
