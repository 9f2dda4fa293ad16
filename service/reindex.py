"""Re-embedding every stored face with a new model version, resumably, then switching atomically.

The job's real progress is the database itself: a face is done when it has a template of the target version.
Killing the job at any moment (SIGKILL included) loses at most one uncommitted batch; running it again takes
over the job (once its heartbeat is stale) and continues with the faces that still lack a template. Serving
processes keep answering with the active version throughout, embed new enrolments with the version being
built as well, and switch when the database says so.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embedding.embedder import Embedder
from embedding.errors import ImageError
from embedding.facepath import decode_crop
from service import registry
from service.crypto import CropCipher
from service.db import crud
from service.db.engine import Database
from service.db.models import JobStatus, ModelStatus, ModelVersion, ReindexJob, as_utc, utcnow
from service.errors import FacedbError
from service.settings import Settings

log = logging.getLogger(__name__)

MAX_ERRORS_KEPT = 100
MAX_PASSES = 20


@dataclass(frozen=True)
class JobProgress:
    """A snapshot of a job, with the rate and ETA of this run."""

    job_id: int
    model_version: str
    status: JobStatus
    total: int
    done: int
    failed: int
    rate_per_s: float | None
    eta_s: float | None
    message: str | None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class Reindexer:
    """Runs re-index jobs against one database."""

    def __init__(self, *, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.crops = CropCipher.from_setting(settings.crop_key)

    # --- registration ---------------------------------------------------------------------------------

    def register(self, path: Path) -> ModelVersion:
        """Register a model file as a version to build (an existing version keeps its status)."""
        embedder = registry.open_embedder(path, self.settings)
        embedder.load()
        with self.db.write() as session:
            mv = registry.register(session, embedder=embedder, path=path, status=ModelStatus.BUILDING)
            if mv.status == ModelStatus.RETIRED:
                mv.status = ModelStatus.BUILDING
            return mv

    def prepare(self, key: str) -> ModelVersion:
        """Mark a registered version (id, version or checksum prefix) for building, e.g. to roll back to it."""
        with self.db.write() as session:
            mv = crud.find_model_version(session, key=key)
            if mv is None:
                raise FacedbError(404, "model_version_not_found", f"no single model version matches {key!r}")
            if mv.status == ModelStatus.RETIRED:
                mv.status = ModelStatus.BUILDING
            return mv

    # --- the job --------------------------------------------------------------------------------------

    def start_job(self, model_version_id: int) -> int:
        """Create the job, or take over a running one whose worker stopped answering; returns its id."""
        me = worker_name()
        with self.db.write() as session:
            crud.lock_changes(session)
            job = crud.running_job(session)
            if job is not None:
                age = (utcnow() - as_utc(job.heartbeat_at)).total_seconds()
                if age < self.settings.job_stale_s and job.worker != me:
                    raise FacedbError(
                        409,
                        "job_running",
                        f"re-index job {job.id} is running on {job.worker} (heartbeat {age:.0f} s ago)",
                    )
                if job.model_version_id != model_version_id:
                    job.status = JobStatus.FAILED
                    job.message = "superseded by a job for another model version"
                    job.finished_at = utcnow()
                    job = None
            if job is None:
                job = ReindexJob(model_version_id=model_version_id, status=JobStatus.RUNNING, errors=[])
                session.add(job)
            job.worker = me
            job.heartbeat_at = utcnow()
            job.total = crud.count_all_faces(session)
            session.flush()
            return job.id

    def run(
        self,
        job_id: int,
        *,
        allow_missing: bool = False,
        on_progress: Callable[[JobProgress], None] | None = None,
        stop: threading.Event | None = None,
    ) -> JobProgress:
        """Re-embed every face lacking a template of the job's version, then switch to it atomically."""
        with self.db.read() as session:
            job = crud.get_job(session, job_id=job_id)
            if job is None:
                raise FacedbError(404, "job_not_found", f"re-index job {job_id} does not exist")
            mv = session.get(ModelVersion, job.model_version_id)
            assert mv is not None
            embedder = registry.load_version(session, mv=mv, settings=self.settings)
        clock = _Rate(self._done(mv.id))
        try:
            for _ in range(MAX_PASSES):
                embedded = self._pass(job_id, mv.id, embedder, clock, on_progress, stop)
                if stop is not None and stop.is_set():
                    return self.progress(job_id, clock)
                if self._try_switch(job_id, mv, allow_missing=allow_missing):
                    break
                if embedded == 0:  # what is left failed in this pass and will fail in the next
                    raise self._unreadable_crops(job_id)
            else:
                raise FacedbError(409, "job_not_converging", "faces kept arriving without templates; run it again")
        except FacedbError as exc:
            self._finish(job_id, JobStatus.FAILED, exc.message)
            raise
        except Exception as exc:
            self._finish(job_id, JobStatus.FAILED, f"{type(exc).__name__}: {exc}")
            raise
        progress = self.progress(job_id, clock)
        if on_progress is not None:
            on_progress(progress)
        return progress

    def _pass(
        self,
        job_id: int,
        mv_id: int,
        embedder: Embedder,
        clock: _Rate,
        on_progress: Callable[[JobProgress], None] | None,
        stop: threading.Event | None,
    ) -> int:
        """One sweep over the faces lacking a template of the version; returns how many it embedded."""
        after, embedded = 0, 0
        while stop is None or not stop.is_set():
            with self.db.read() as session:
                rows = crud.faces_missing_templates(
                    session, model_version_id=mv_id, after=after, limit=self.settings.reindex_batch_size
                )
            if not rows:
                return embedded
            after = rows[-1][0]
            ids, crops, errors = [], [], []
            for face_id, crop in rows:
                if crop is None:
                    errors.append({"face_id": face_id, "code": "no_crop", "message": "no stored crop"})
                    continue
                try:
                    plain = self.crops.open(face_id, crop.data)
                    crops.append(decode_crop(plain, aligned=crop.aligned).for_model(embedder.card.input))
                    ids.append(face_id)
                except ImageError as exc:
                    errors.append({"face_id": face_id, "code": exc.code, "message": exc.message})
            x = embedder.embed(crops) if crops else None
            embedded += len(ids)
            with self.db.write() as session:
                if x is not None:
                    crud.insert_templates(session, model_version_id=mv_id, face_ids=ids, embeddings=x)
                job = crud.get_job(session, job_id=job_id)
                assert job is not None
                job.done = crud.count_templates_of(session, model_version_id=mv_id)
                job.total = crud.count_all_faces(session)
                if errors:
                    known = {e["face_id"] for e in job.errors}
                    new = [e for e in errors if e["face_id"] not in known]
                    job.failed += len(new)
                    job.errors = [*job.errors, *new][:MAX_ERRORS_KEPT]
                job.heartbeat_at = utcnow()
            clock.update(self._done(mv_id))
            if on_progress is not None:
                on_progress(self.progress(job_id, clock))
        return embedded

    def _unreadable_crops(self, job_id: int) -> FacedbError:
        with self.db.read() as session:
            job = crud.get_job(session, job_id=job_id)
            errors = list(job.errors) if job is not None else []
        codes = Counter(str(e.get("code")) for e in errors)
        summary = ", ".join(f"{c}: {n}" for c, n in codes.most_common())
        hint = " (set the FACEDB_CROP_KEY they were stored with)" if "crop_encrypted" in codes else ""
        return FacedbError(
            409,
            "faces_not_reindexable",
            f"stored crops could not be re-embedded ({summary}){hint}; the job's errors name the faces",
        )

    def _try_switch(self, job_id: int, mv: ModelVersion, *, allow_missing: bool) -> bool:
        """Activate the version if every face that can have a template has one; False to make another pass."""
        started = time.monotonic()
        with self.db.write() as session:
            crud.lock_changes(session)
            if crud.count_faces_missing_templates(session, model_version_id=mv.id, with_crop=True):
                return False
            without_crop = crud.count_faces_missing_templates(session, model_version_id=mv.id, with_crop=False)
            if without_crop and not allow_missing:
                raise FacedbError(
                    409,
                    "faces_not_reindexable",
                    f"{without_crop} faces have no stored crop and cannot be re-embedded; re-enrol them, or "
                    "switch anyway with --allow-missing (they will not be searchable under the new model)",
                )
            target = session.get(ModelVersion, mv.id)
            assert target is not None
            crud.activate_model_version(session, model_version=target)
            job = crud.get_job(session, job_id=job_id)
            assert job is not None
            job.status = JobStatus.COMPLETED
            job.done = crud.count_templates_of(session, model_version_id=mv.id)
            job.finished_at = job.heartbeat_at = utcnow()
            job.switch_seconds = time.monotonic() - started
            job.message = f"active model is now {target.name}@{target.version}"
        return True

    def _finish(self, job_id: int, status: JobStatus, message: str) -> None:
        with self.db.write() as session:
            job = crud.get_job(session, job_id=job_id)
            if job is not None and job.status == JobStatus.RUNNING:
                job.status, job.message, job.finished_at = status, message[:1024], utcnow()

    def _done(self, mv_id: int) -> int:
        with self.db.read() as session:
            return crud.count_templates_of(session, model_version_id=mv_id)

    def progress(self, job_id: int, clock: _Rate | None = None) -> JobProgress:
        """The job's state; rate and ETA come from this run's clock, or from the job's own timestamps."""
        with self.db.read() as session:
            job = crud.get_job(session, job_id=job_id)
            if job is None:
                raise FacedbError(404, "job_not_found", f"re-index job {job_id} does not exist")
            mv = session.get(ModelVersion, job.model_version_id)
            label = f"{mv.name}@{mv.version}" if mv else "?"
        if clock is not None:
            rate = clock.rate()
        else:
            elapsed = (as_utc(job.heartbeat_at) - as_utc(job.started_at)).total_seconds()
            rate = job.done / elapsed if elapsed > 0 and job.status == JobStatus.RUNNING else None
        remaining = max(0, job.total - job.done - job.failed)
        eta = remaining / rate if rate and job.status == JobStatus.RUNNING else None
        return JobProgress(
            job_id=job.id,
            model_version=label,
            status=job.status,
            total=job.total,
            done=job.done,
            failed=job.failed,
            rate_per_s=rate,
            eta_s=eta,
            message=job.message,
        )


class _Rate:
    """Faces per second made by this run."""

    def __init__(self, done: int) -> None:
        self._start, self._t0, self._done, self._t = done, time.monotonic(), done, time.monotonic()

    def update(self, done: int) -> None:
        self._done, self._t = done, time.monotonic()

    def rate(self) -> float | None:
        dt = self._t - self._t0
        return (self._done - self._start) / dt if dt > 0 and self._done > self._start else None
