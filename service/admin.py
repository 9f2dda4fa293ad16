"""Model versions and re-index jobs, for the admin API and the CLI."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from embedding.embedder import ONNX_SUFFIXES, TORCH_SUFFIXES
from embedding.errors import ModelLoadError
from service import schemas
from service.db import crud
from service.db.engine import Database
from service.db.models import JobStatus, ModelStatus, ModelVersion, ReindexJob
from service.errors import FacedbError
from service.reindex import JobProgress, Reindexer
from service.settings import Settings

log = logging.getLogger(__name__)

MODEL_SUFFIXES = TORCH_SUFFIXES | ONNX_SUFFIXES


class AdminService:
    """Lists model versions, starts re-index jobs in a background thread, reports their progress."""

    def __init__(self, *, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.reindexer = Reindexer(db=db, settings=settings)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._live: dict[int, JobProgress] = {}

    def list_models(self) -> schemas.ModelVersionsPublic:
        with self.db.read() as session:
            return schemas.ModelVersionsPublic(
                items=[
                    model_public(mv, crud.count_templates_of(session, model_version_id=mv.id))
                    for mv in crud.list_model_versions(session)
                ]
            )

    def target(self, body: schemas.ReindexCreate) -> ModelVersion:
        """Register or look up the version a re-index should build."""
        if (body.model_path is None) == (body.model_version is None):
            raise FacedbError(422, "invalid_reindex", "give exactly one of model_path and model_version")
        if body.model_path is not None:
            path = self._model_file(body.model_path)
            try:
                return self.reindexer.register(path)
            except ModelLoadError as exc:
                log.warning("admin re-index: %s", exc)
                raise self._refused("it is not a calibrated model file facedb can read") from exc
        return self.reindexer.prepare(str(body.model_version))

    def _model_file(self, name: str) -> Path:
        """The model file a request names: inside FACEDB_MODELS_DIR, a regular .pt/.pth/.onnx file within
        FACEDB_MAX_MODEL_BYTES. Every failure is the same 422, so a caller learns nothing about other files."""
        root = self.settings.resolved_models_dir.resolve()
        try:
            path = (root / name).resolve()
            ok = (
                path.is_relative_to(root)
                and path.suffix.lower() in MODEL_SUFFIXES
                and path.is_file()
                and path.stat().st_size <= self.settings.max_model_bytes
            )
        except (OSError, ValueError):  # NUL bytes, names too long, unreadable folders
            ok = False
        if not ok:
            raise self._refused("no such model file")
        return path

    def _refused(self, why: str) -> FacedbError:
        return FacedbError(
            422,
            "model_file_invalid",
            f"model_path must name a model file (.pt, .pth or .onnx, at most {self.settings.max_model_bytes} bytes) "
            f"in FACEDB_MODELS_DIR: {why}",
        )

    def start_reindex(self, body: schemas.ReindexCreate) -> schemas.JobPublic:
        """Start a job in the background (one per process); 409 if one runs anywhere."""
        if self._thread is not None and self._thread.is_alive():
            raise FacedbError(409, "job_running", "a re-index job is already running in this process")
        mv = self.target(body)
        if mv.status == ModelStatus.ACTIVE:
            raise FacedbError(409, "model_already_active", f"{mv.name}@{mv.version} is already the active model")
        job_id = self.reindexer.start_job(mv.id)

        def work() -> None:
            try:
                self.reindexer.run(
                    job_id,
                    allow_missing=body.allow_missing,
                    on_progress=lambda p: self._live.__setitem__(job_id, p),
                    stop=self._stop,
                )
            except Exception:  # recorded on the job row by run(); the thread must not die noisily
                log.exception("re-index job %d failed", job_id)

        self._thread = threading.Thread(target=work, name=f"facedb-reindex-{job_id}", daemon=True)
        self._thread.start()
        return self.get_job(job_id)

    def running_jobs(self) -> list[ReindexJob]:
        """Re-index jobs that are running now (their counters are what the job last wrote)."""
        with self.db.read() as session:
            return [j for j in crud.list_jobs(session, limit=20) if j.status == JobStatus.RUNNING]

    def get_job(self, job_id: int) -> schemas.JobPublic:
        with self.db.read() as session:
            job = crud.get_job(session, job_id=job_id)
            if job is None:
                raise FacedbError(404, "job_not_found", f"re-index job {job_id} does not exist")
            mv = session.get(ModelVersion, job.model_version_id)
        live = self._live.get(job_id)
        progress = live if live is not None and live.status == job.status else self.reindexer.progress(job_id)
        return job_public(job, mv, progress)

    def close(self) -> None:
        """Stop a running job between batches; it resumes when started again."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


def model_public(mv: ModelVersion, templates: int) -> schemas.ModelVersionPublic:
    return schemas.ModelVersionPublic(
        id=mv.id,
        name=mv.name,
        version=mv.version,
        checksum=mv.checksum,
        status=mv.status.value,
        embedding_dim=mv.embedding_dim,
        default_threshold=mv.default_threshold,
        thresholds={str(k): float(v) for k, v in mv.thresholds.items()},
        templates=templates,
        created_at=mv.created_at,
        activated_at=mv.activated_at,
    )


def job_public(job: ReindexJob, mv: ModelVersion | None, progress: JobProgress) -> schemas.JobPublic:
    return schemas.JobPublic(
        id=job.id,
        model_version=f"{mv.name}@{mv.version}" if mv else "?",
        status=job.status.value,
        total=progress.total,
        done=progress.done,
        failed=progress.failed,
        rate_per_s=progress.rate_per_s,
        eta_s=progress.eta_s,
        errors=list(job.errors or []),
        message=job.message,
        started_at=job.started_at,
        heartbeat_at=job.heartbeat_at,
        finished_at=job.finished_at,
        switch_seconds=job.switch_seconds,
    )
