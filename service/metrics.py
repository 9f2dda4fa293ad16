"""Prometheus metrics for one app: requests by route and status, time per stage, the embedder queue, faces per
gallery, the active model and re-index progress. Each app has its own registry (no process-global state)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from service.runtime import Runtime

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The app's metrics; ``observe_stage`` is what the face service reports its stage times to."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "facedb_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "facedb_http_request_seconds",
            "Time from request to response, by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "facedb_stage_seconds",
            "Time spent per stage of the face path: decode, detect, embed, search.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.overloaded = Counter(
            "facedb_overloaded",
            "Requests refused with 429 because the embedder queue was full.",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "facedb_rate_limited",
            "Requests refused with 429 because their key was over its rate.",
            registry=self.registry,
        )
        self._live: _LiveCollector | None = None

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stages.labels(stage).observe(seconds)

    def watch(self, runtime: Runtime) -> None:
        """Report what is read at scrape time (queue, galleries, model, re-index) from this runtime."""
        if self._live is not None:
            self.registry.unregister(self._live)
        self._live = _LiveCollector(runtime)
        self.registry.register(self._live)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        batcher = self.runtime.batcher
        queue = GaugeMetricFamily("facedb_embed_queue_depth", "Images waiting for the embedder.")
        queue.add_metric([], batcher.queued if batcher is not None else 0)
        yield queue

        service = self.runtime.service
        faces = GaugeMetricFamily("facedb_gallery_faces", "Enrolled faces per gallery.", labels=["gallery"])
        for gallery in service.list_galleries().items:  # the database's counts, the source of truth
            faces.add_metric([gallery.name], gallery.face_count)
        yield faces

        model = InfoMetricFamily("facedb_active_model", "The model identify and verify answer with.")
        info = service.active
        model.add_metric([], {"name": info.name, "version": info.version, "label": info.label})
        yield model

        jobs = self.runtime.admin.running_jobs()
        done = GaugeMetricFamily("facedb_reindex_done", "Faces re-embedded by a running re-index job.", labels=["job"])
        total = GaugeMetricFamily("facedb_reindex_total", "Faces a running re-index job covers.", labels=["job"])
        failed = GaugeMetricFamily(
            "facedb_reindex_failed", "Faces a running re-index job could not re-embed.", labels=["job"]
        )
        for job in jobs:
            done.add_metric([str(job.id)], job.done)
            total.add_metric([str(job.id)], job.total)
            failed.add_metric([str(job.id)], job.failed)
        yield from (done, total, failed)


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (never the raw path: ids would explode the
    label set); requests that match no route are counted as ``unmatched``."""

    def __init__(self, app: ASGIApp, *, metrics: Callable[[], Metrics]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            template = _template(scope)
            metrics = self.metrics()
            method = scope.get("method", "")
            metrics.requests.labels(template, method, str(status)).inc()
            metrics.latency.labels(template, method).observe(time.perf_counter() - started)


def _template(scope: Scope) -> str:
    """The route template of a request: never its raw path, whose ids would make unbounded label values."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return str(route.path)
    path = str(scope.get("path", ""))
    for prefix in ("/console", "/v1"):
        if path == prefix or path.startswith(prefix + "/"):
            return prefix + "/*"
    return "unmatched"
