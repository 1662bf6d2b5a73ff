"""What the node counts, for Prometheus (``GET /metrics``, prometheus-client's text format).

Names follow OpenVINO Model Server where it has one (``ovms_requests_success``, ``ovms_requests_fail``,
``ovms_inference_time_us``, ``ovms_request_time_us``, ``ovms_current_requests``, with its labels
``name``, ``version``, ``api``, ``interface``, ``method``), so an OVMS dashboard reads the HTTP door
as it is. prometheus-client adds ``_total`` to counters, as the Prometheus naming rules say. What OVMS
has no name for (a DICOM node's instances and reports) is ``edgecxr_*``. One registry per node: a
second node in the same process (a test) does not add to the first one's counts.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()

# microseconds, as OVMS: 0.1 ms .. 100 s
US_BUCKETS = (100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
              2_500_000, 5_000_000, 10_000_000, 25_000_000, 100_000_000)


class Metrics:
    def __init__(self, model: str, version: str = "1"):
        self.registry = r = CollectorRegistry()
        self.model, self.version = model, version
        lab = ("name", "version")
        self.requests_success = Counter("ovms_requests_success", "Requests answered successfully",
                                        ("api", "interface", "method", *lab), registry=r)
        self.requests_fail = Counter("ovms_requests_fail", "Requests that failed (4xx, 5xx)",
                                     ("api", "interface", "method", *lab), registry=r)
        self.inference_time = Histogram("ovms_inference_time_us", "Model inference time (runtime call only)",
                                        lab, buckets=US_BUCKETS, registry=r)
        self.request_time = Histogram("ovms_request_time_us", "Time from receipt to result (queue, decode, "
                                      "inference; for DICOM and STOW: spooled to report written)",
                                      ("interface", *lab), buckets=US_BUCKETS, registry=r)
        self.current_requests = Gauge("ovms_current_requests", "Inference requests being served now", lab,
                                      registry=r)
        self.received = Counter("edgecxr_instances_received", "Instances stored in the spool", ("door",), registry=r)
        self.read = Counter("edgecxr_instances_read", "Instances read by the model", ("door",), registry=r)
        self.not_applicable = Counter("edgecxr_instances_not_applicable", "Readable images the model is not for "
                                      "(not CR/DX, not chest, lateral)", ("door",), registry=r)
        self.failed = Counter("edgecxr_instances_failed", "Instances that could not be read (bad pixel data, "
                              "over the pixel limit, unreadable)", ("door",), registry=r)
        self.refused_at_door = Counter("edgecxr_instances_refused", "Instances refused before the spool (status "
                                       "0xA700, a STOW failure)", ("door", "reason"), registry=r)
        self.duplicates = Counter("edgecxr_instances_duplicate", "Re-sent instances (no second report)", registry=r)
        self.sr_sent = Counter("edgecxr_sr_sent", "Reports the PACS acknowledged", registry=r)
        self.sr_failed = Counter("edgecxr_sr_failed", "Report deliveries that failed (each is retried)", registry=r)
        self.queue_depth = Gauge("edgecxr_queue_depth", "Work waiting for the worker (spooled instances and "
                                 "inference requests)", registry=r)
        self.outbox_depth = Gauge("edgecxr_outbox_depth", "Reports waiting for the PACS", registry=r)
        self.rejected_busy = Counter("edgecxr_http_rejected_busy", "Requests answered 503 (queue full)", registry=r)
        for door in ("dicom", "stow", "http"):
            for c in (self.received, self.read, self.not_applicable, self.failed):
                c.labels(door)
        for m in ("ModelInfer", "ModelMetadata", "ModelReady", "ServerLive", "ServerReady", "ServerMetadata", "Stow"):
            self.requests_success.labels("KServe", "REST", m, model, version)
            self.requests_fail.labels("KServe", "REST", m, model, version)

    def ok(self, method: str) -> None:
        self.requests_success.labels("KServe", "REST", method, self.model, self.version).inc()

    def fail(self, method: str) -> None:
        self.requests_fail.labels("KServe", "REST", method, self.model, self.version).inc()

    def inference_us(self, us: float) -> None:
        self.inference_time.labels(self.model, self.version).observe(us)

    def request_us(self, interface: str, us: float) -> None:
        self.request_time.labels(interface, self.model, self.version).observe(us)

    def track(self, queue_depth: Callable[[], float], outbox_depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(queue_depth)
        self.outbox_depth.set_function(outbox_depth)

    def text(self) -> bytes:
        return generate_latest(self.registry)
