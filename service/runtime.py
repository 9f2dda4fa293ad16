"""Builds the long-lived resources from settings, for the HTTP server and the CLI alike."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from embedding.facepath import DetectorPool, build_detector
from index import set_search_threads
from service import registry
from service.admin import AdminService
from service.audit import AuditLog
from service.batching import MicroBatcher
from service.core import FaceService
from service.db.engine import Database
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The database, the embedding worker (when serving) and the service over them."""

    settings: Settings
    db: Database
    batcher: MicroBatcher | None
    service: FaceService
    admin: AdminService
    audit: AuditLog

    def sync_loop(self, stop: threading.Event) -> None:
        """Catch the index up with other processes' writes until ``stop``; snapshot it now and then."""
        last_snapshot = time.monotonic()
        while not stop.wait(self.settings.index_sync_interval_s):
            try:
                self.service.sync()
                self.service.indexes.maintain()
                if time.monotonic() - last_snapshot > self.settings.snapshot_interval_s:
                    self.service.indexes.save_snapshots()
                    self.audit.purge()
                    last_snapshot = time.monotonic()
            except Exception:  # keep serving; the next round retries and readyz shows the lag
                log.exception("index catch-up failed")

    def close(self) -> None:
        """Snapshot the index, stop the embedder worker, close the database pool."""
        try:
            self.admin.close()
            self.service.stop()
        finally:
            if self.batcher is not None:
                self.batcher.close()
            self.db.dispose()


def build_runtime(settings: Settings, *, batching: bool = True) -> Runtime:
    """Open the database, load the model, and bring the index up to date.

    Serving (``batching``) runs the embedder on one intra-op thread unless ``FACEDB_TORCH_THREADS`` says otherwise:
    concurrent requests already keep the cores busy with detection, and a second embedder thread only competes with
    them (measured: 61.7 against 50.2 identifications/s with 8 clients on 2 cores, `benchmarks/face_path_speed.py`).
    """
    if batching and settings.torch_threads is None:
        settings = settings.model_copy(update={"torch_threads": 1})
    set_search_threads(settings.index_threads)
    db = Database(settings.resolved_database_url)
    embedder = registry.open_embedder(settings.resolved_model_path, settings)
    batcher = (
        MicroBatcher(
            max_batch=settings.embed_batch_size,
            max_wait_s=settings.embed_batch_wait_ms / 1000,
            max_queue=settings.embed_queue_size,
        )
        if batching
        else None
    )
    detector = DetectorPool(
        size=settings.detector_pool_size,
        # The configured model's card names its landmarks; the embedder is loaded before the first detector.
        factory=lambda: build_detector(settings.detector, landmarks=settings.landmarks_for(embedder.card.input)),
    )
    service = FaceService(settings=settings, db=db, embedder=embedder, batcher=batcher, detector=detector)
    try:
        service.start()
    except BaseException:
        if batcher is not None:
            batcher.close()
        db.dispose()
        raise
    return Runtime(
        settings=settings,
        db=db,
        batcher=batcher,
        service=service,
        admin=AdminService(db=db, settings=settings),
        audit=AuditLog(db, settings),
    )
