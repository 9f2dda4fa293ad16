"""Keeps per-gallery FAISS indexes in step with the database, which is the source of truth.

Every write commits to the database first, together with rows in the ``changes`` log. The index is a cache
derived from it: after a write, and periodically for writes made by other processes, :meth:`catch_up`
applies the changes with sequence numbers above the last one applied. Applying is idempotent (adds of
faces already present and removals of absent ones are no-ops, and face rows are always read fresh), so
replaying from any earlier point converges to the database's state. That is what makes snapshots safe to
reuse: a snapshot carries the sequence it reflects, start-up replays from there, and a snapshot that is
corrupt, from another model, or disagrees with the database's face count is discarded and rebuilt.

Each gallery's FAISS index kind follows its size and the hardware (`choose_kind`, or ``FACEDB_INDEX_KIND``):
`maintain` converts a gallery whose size crossed a boundary, and compacts one with many tombstones, in a background
thread while it keeps serving. With the Milvus backend the index lives in Milvus instead: collections per gallery
and model version, the applied sequence stored beside them, and the same idempotent catch-up keeping them in step.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from index import KINDS, GalleryIndex, Hit, IndexCorruptError, Tuning, gpu_available
from index.gallery import IdentityScore
from index.milvus_gallery import MilvusGallery
from service.db import crud
from service.db.engine import Database
from service.db.models import Change, ChangeKind

log = logging.getLogger(__name__)

_BATCH = 5_000

# Gallery sizes in faces (the face and mean indexes of a gallery share one kind) where `choose_kind` moves from
# exact search to the approximate CPU kind and back; the gap keeps a gallery near the boundary from converting back
# and forth. Measured in benchmarks/README.md (Search at scale): exact search costs ~0.02-0.045 ms per 1,000 vectors
# on one core, ~1-2 ms at 50,000, where `pq` takes 0.2 ms.
APPROXIMATE_FROM = 50_000
FLAT_BELOW = 25_000
GPU_IVF_FROM = 20_000_000
CPU_APPROXIMATE = "pq"

Backend = Literal["faiss", "numpy", "milvus"]


def choose_kind(n: int, *, gpu: bool, current: str | None = None) -> str:
    """The index kind for a gallery of ``n`` faces.

    CPU: exact float32 ("flat") below `APPROXIMATE_FROM`, every face's fast-scan PQ code scanned with exact
    re-ranking ("pq") from there: at 1M faces 1.4 ms p50 and recall@1 0.999 against exact search's 37 ms, where IVF
    lists of the same codes ("ivfpq", still a setting) missed strangers' nearest faces (0.964) for 1.3 ms, and HNSW
    gave 0.916 (benchmarks/README.md). A gallery already on an approximate CPU kind (pq, or the ivfpq or hnsw of
    an earlier version, which become pq) stays approximate until it shrinks below `FLAT_BELOW`.
    GPU: exact float16 on the device ("gpu_flat") up to `GPU_IVF_FROM`, IVF on the device beyond.
    """
    if gpu:
        return "gpu_ivf" if n >= GPU_IVF_FROM else "gpu_flat"
    was_approximate = current in KINDS and KINDS[current].approximate
    if n >= APPROXIMATE_FROM or (was_approximate and n >= FLAT_BELOW):
        return CPU_APPROXIMATE
    return "flat"


@dataclass(frozen=True)
class IndexStats:
    """What the index holds, and how far it has caught up with the change log."""

    applied_seq: int
    galleries: int
    faces: int


class IndexManager:
    """Owns one :class:`GalleryIndex` per gallery for the active model version."""

    def __init__(
        self,
        *,
        db: Database,
        model_version_id: int,
        model_checksum: str,
        dim: int,
        snapshot_dir: Path | None,
        backend: Backend = "faiss",
        identity_score: IdentityScore = "best",
        backfill: Callable[[Sequence[int]], int] | None = None,
        kind: str = "auto",
        tuning: Tuning | None = None,
        milvus_uri: str = "",
        milvus_token: str = "",
        mean_parts: Sequence[int] | None = None,
    ) -> None:
        """``backfill(face_ids)`` computes and stores missing templates of this model version from the stored
        crops (faces enrolled by a process that did not know this version yet); it returns how many it made.
        ``kind``: a FAISS index kind for every gallery, or "auto" (`choose_kind`). ``mean_parts``: the model card's
        `parts` (a fusion: identity means are normalised part by part)."""
        self._db = db
        self._backfill = backfill
        self._model_version_id = model_version_id
        self._model_checksum = model_checksum
        self._dim = dim
        self._snapshot_dir = snapshot_dir
        self._backend = backend
        self._identity_score: IdentityScore = identity_score
        self._mean_parts = tuple(mean_parts) if mean_parts is not None else None
        self._kind = kind
        self._tuning = tuning
        self._gpu = backend == "faiss" and kind == "auto" and gpu_available()
        self._milvus_uri = milvus_uri
        if backend == "milvus" and milvus_uri.endswith(".db"):  # a milvus-lite file: its folder must exist
            Path(milvus_uri).parent.mkdir(parents=True, exist_ok=True)
        self._milvus_token = milvus_token
        self._indexes: dict[int, GalleryIndex | MilvusGallery] = {}
        self._applied_seq = 0
        # Serialises catch-up and snapshotting; searches only take the per-index lock.
        self._lock = threading.Lock()
        self._maintenance: threading.Thread | None = None

    @property
    def applied_seq(self) -> int:
        """The newest change applied to the in-memory indexes."""
        return self._applied_seq

    def stats(self) -> IndexStats:
        indexes = list(self._indexes.values())
        return IndexStats(self._applied_seq, len(indexes), sum(ix.ntotal for ix in indexes))

    # --- start-up -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load snapshots where they are trustworthy, rebuild the rest, and catch up."""
        with self._lock:
            with self._db.read() as session:
                galleries = crud.list_galleries(session)
                head = crud.max_seq(session)
            start_seq = head
            for gallery in galleries:
                loaded: tuple[GalleryIndex | MilvusGallery, int] | None
                if self._backend == "milvus":
                    loaded = self._open_milvus(gallery.id, head)
                else:
                    loaded = self._load_snapshot(gallery.id, head)
                if loaded is None:
                    # Read the sequence before the faces: replaying from it can only re-apply changes.
                    with self._db.read() as session:
                        seq = crud.max_seq(session)
                    self._indexes[gallery.id] = self._rebuild(gallery.id)
                else:
                    self._indexes[gallery.id], seq = loaded
                start_seq = min(start_seq, seq)
            self._applied_seq = start_seq
            self._catch_up_locked()
            self._verify_counts()

    def _load_snapshot(self, gallery_id: int, head: int) -> tuple[GalleryIndex, int] | None:
        path = self._gallery_dir(gallery_id)
        if path is None or not (path / "manifest.json").exists():
            return None
        try:
            index, meta = GalleryIndex.load(
                path, identity_score=self._identity_score, tuning=self._tuning, mean_parts=self._mean_parts
            )
        except IndexCorruptError as exc:
            log.warning(
                "index snapshot for gallery %d is unusable (%s); rebuilding from the database",
                gallery_id,
                exc,
            )
            return None
        seq = meta.get("last_seq")
        if (
            meta.get("model_checksum") != self._model_checksum
            or meta.get("gallery_id") != gallery_id
            or not isinstance(seq, int)
            or seq > head
        ):
            log.warning("index snapshot for gallery %d does not match the database; rebuilding", gallery_id)
            return None
        return index, seq

    def _open_milvus(self, gallery_id: int, head: int) -> tuple[MilvusGallery, int] | None:
        """This gallery's Milvus collections and the sequence they reflect; None when they must be rebuilt."""
        index = self._milvus_gallery(gallery_id)
        seq = index.last_seq
        if seq == 0 or seq > head:  # never caught up, or written against another database
            if seq > head:
                log.warning("Milvus gallery %d is ahead of the database (%d > %d); rebuilding", gallery_id, seq, head)
            index.close()
            return None
        return index, seq

    def _milvus_gallery(self, gallery_id: int) -> MilvusGallery:
        return MilvusGallery(
            self._milvus_uri,
            gallery_id=gallery_id,
            model_key=self._model_checksum,
            dim=self._dim,
            identity_score=self._identity_score,
            token=self._milvus_token,
            mean_parts=self._mean_parts,
        )

    def kind_for(self, n: int, *, current: str | None = None) -> str:
        """The FAISS index kind a gallery of ``n`` faces should have (``current``: the kind it has)."""
        if self._backend != "faiss":
            return "flat"
        if self._kind != "auto":
            return self._kind
        return choose_kind(n, gpu=self._gpu, current=current)

    def _new_index(self, gallery_id: int, n: int) -> GalleryIndex | MilvusGallery:
        """An empty index for a gallery about to hold ``n`` faces (Milvus: its collections, emptied)."""
        if self._backend == "milvus":
            index = self._milvus_gallery(gallery_id)
            index.drop()
            return self._milvus_gallery(gallery_id)
        return GalleryIndex(
            self._dim,
            backend="numpy" if self._backend == "numpy" else "faiss",
            kind=self.kind_for(n),
            tuning=self._tuning,
            identity_score=self._identity_score,
            mean_parts=self._mean_parts,
        )

    def _rebuild(self, gallery_id: int) -> GalleryIndex | MilvusGallery:
        self._backfill_gallery(gallery_id)
        with self._db.read() as session:
            n = crud.count_templates(session, gallery_id=gallery_id, model_version_id=self._model_version_id)
        index = self._new_index(gallery_id, n)
        with self._db.read() as session:
            for face_ids, identity_ids, x in crud.iter_gallery_embeddings(
                session, gallery_id=gallery_id, model_version_id=self._model_version_id
            ):
                index.add(face_ids, identity_ids, x)
        log.info(
            "rebuilt the index of gallery %d from the database: %d faces (%s)", gallery_id, index.ntotal, _kind(index)
        )
        return index

    def _backfill_gallery(self, gallery_id: int) -> None:
        if self._backfill is None:
            return
        after = 0
        while True:
            with self._db.read() as session:
                rows = crud.faces_missing_templates(
                    session, model_version_id=self._model_version_id, gallery_id=gallery_id, after=after, limit=1000
                )
            if not rows:
                return
            self._backfill([face_id for face_id, crop in rows if crop is not None])  # others cannot be made
            after = rows[-1][0]

    def _verify_counts(self) -> None:
        # Templates this version lacks (faces enrolled while another version was active) are made first;
        # the count check below then rebuilds any gallery whose index does not hold them all.
        for gallery_id in list(self._indexes):
            self._backfill_gallery(gallery_id)
        with self._db.read() as session:
            for gallery_id, index in list(self._indexes.items()):
                expected = crud.count_templates(session, gallery_id=gallery_id, model_version_id=self._model_version_id)
                if index.ntotal != expected:
                    log.warning(
                        "gallery %d index has %d faces but the database %d; rebuilding",
                        gallery_id,
                        index.ntotal,
                        expected,
                    )
                    self._indexes[gallery_id] = self._rebuild(gallery_id)

    # --- catching up ----------------------------------------------------------------------------------

    def catch_up(self) -> int:
        """Apply every change newer than the last one applied; returns how many were applied."""
        with self._lock:
            return self._catch_up_locked()

    def lag(self) -> int:
        """How many changes the database has that the index has not applied yet."""
        with self._db.read() as session:
            return max(0, crud.max_seq(session) - self._applied_seq)

    def _catch_up_locked(self) -> int:
        applied = 0
        while True:
            with self._db.read() as session:
                changes = crud.changes_after(session, seq=self._applied_seq, limit=_BATCH)
                added = [c.face_id for c in changes if c.kind == ChangeKind.FACE_ADDED and c.face_id is not None]
                rows = crud.face_embeddings(session, face_ids=added, model_version_id=self._model_version_id)
            if not changes:
                return applied
            missing = set(added) - {int(f) for f in rows[0]}
            if missing and self._backfill is not None and self._backfill(sorted(missing)):
                with self._db.read() as session:
                    rows = crud.face_embeddings(session, face_ids=added, model_version_id=self._model_version_id)
            self._apply(changes, rows)
            self._applied_seq = changes[-1].seq
            applied += len(changes)

    def _apply(self, changes: Sequence[Change], rows: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        face_ids, identity_ids, x = rows
        row_of = {int(f): i for i, f in enumerate(face_ids)}
        # Consecutive additions are added in one call per gallery; a removal first flushes its gallery's.
        pending: dict[int, list[int]] = {}

        def flush(gallery_id: int) -> None:
            rows_ = pending.pop(gallery_id, [])
            if rows_:
                self._add(gallery_id, face_ids[rows_], identity_ids[rows_], x[rows_])

        for change in changes:
            gid = change.gallery_id
            if change.kind == ChangeKind.FACE_ADDED:
                row = row_of.get(change.face_id if change.face_id is not None else -1)
                if row is not None:  # None: deleted since, or made by another model version
                    pending.setdefault(gid, []).append(row)
                continue
            flush(gid)
            index = self._indexes.get(gid)
            if change.kind == ChangeKind.FACE_REMOVED and index is not None:
                index.remove_faces(np.array([change.face_id], dtype=np.int64))
            elif change.kind == ChangeKind.IDENTITY_REMOVED and index is not None:
                index.remove_identity(int(change.identity_id or -1))
            elif change.kind == ChangeKind.GALLERY_REMOVED:
                gone = self._indexes.pop(gid, None)
                if isinstance(gone, MilvusGallery):
                    gone.drop()
                self._drop_snapshot(gid)
        for gid in list(pending):
            flush(gid)

    def _add(self, gallery_id: int, face_ids: np.ndarray, identity_ids: np.ndarray, x: np.ndarray) -> None:
        index = self._indexes.get(gallery_id)
        if index is None:
            index = self._indexes[gallery_id] = self._new_index(gallery_id, len(face_ids))
        new = ~index.contains(face_ids)
        if new.any():
            index.add(face_ids[new], identity_ids[new], x[new])

    # --- search ---------------------------------------------------------------------------------------

    def face_ids(self, gallery_id: int) -> np.ndarray:
        """int64 (N,): the faces one gallery's live index holds, ascending (empty for a gallery with none)."""
        index = self._indexes.get(gallery_id)
        return np.empty(0, dtype=np.int64) if index is None else index.face_ids()

    def gallery_size(self, gallery_id: int, *, by: IdentityScore | None = None) -> int:
        """What a query in one gallery is compared with: identities (``identity_score="mean"``, unless ``by`` is
        "best") or faces."""
        index = self._indexes.get(gallery_id)
        if index is None:
            return 0
        return index.ntotal if by == "best" else index.n_compared

    def search(self, gallery_id: int, xq: np.ndarray, k: int, *, by: IdentityScore | None = None) -> list[list[Hit]]:
        """Top-k distinct identities per query row of ``xq`` (float32 (M, D)); [] for an empty gallery. ``by="best"``
        ranks identities by their best face whatever the configured identity score."""
        index = self._indexes.get(gallery_id)
        if index is None or index.ntotal == 0:
            return [[] for _ in range(len(xq))]
        return index.search(xq, k, by=by)

    # --- snapshots ------------------------------------------------------------------------------------

    def save_snapshots(self) -> None:
        """Write every gallery's index and the sequence it reflects, atomically per gallery (Milvus: only the
        sequence; its writes are already durable)."""
        with self._lock:
            for index in self._indexes.values():
                if isinstance(index, MilvusGallery):
                    index.set_last_seq(self._applied_seq)
        if self._snapshot_dir is None:
            return
        with self._lock:
            for gallery_id, index in self._indexes.items():
                if not isinstance(index, GalleryIndex):
                    continue
                path = self._gallery_dir(gallery_id)
                assert path is not None
                index.save(
                    path,
                    meta={
                        "gallery_id": gallery_id,
                        "model_checksum": self._model_checksum,
                        "last_seq": self._applied_seq,
                    },
                )

    def _gallery_dir(self, gallery_id: int) -> Path | None:
        return None if self._snapshot_dir is None else self._snapshot_dir / f"gallery-{gallery_id}"

    def _drop_snapshot(self, gallery_id: int) -> None:
        path = self._gallery_dir(gallery_id)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    # --- maintenance ----------------------------------------------------------------------------------

    def maintain(self, *, wait: bool = False) -> str | None:
        """Convert one gallery whose size calls for another kind, or compact one with many tombstones, in a
        background thread (one at a time; the gallery keeps serving and taking changes). Returns what it started
        ("gallery 3: flat -> pq"), or None. ``wait`` joins the thread (tests, CLI)."""
        if self._backend != "faiss" or (self._maintenance is not None and self._maintenance.is_alive()):
            return None
        for gallery_id, index in list(self._indexes.items()):
            if not isinstance(index, GalleryIndex):
                continue
            wanted = self.kind_for(index.ntotal, current=index.kind)
            if wanted == index.kind and not index.needs_compaction:
                continue
            what = f"gallery {gallery_id}: {index.kind} -> {wanted}"
            thread = threading.Thread(target=_compact, args=(index, wanted, what), name="facedb-index", daemon=True)
            self._maintenance = thread
            thread.start()
            if wait:
                thread.join()
            return what
        return None

    def kinds(self) -> dict[int, str]:
        """Each gallery's index kind ("milvus" for Milvus)."""
        return {gallery_id: _kind(index) for gallery_id, index in self._indexes.items()}


def _kind(index: GalleryIndex | MilvusGallery) -> str:
    return index.kind if isinstance(index, GalleryIndex) else "milvus"


def _compact(index: GalleryIndex, kind: str, what: str) -> None:
    started = time.monotonic()
    try:
        index.compact(kind=kind)
    except Exception:  # the old index keeps serving; the next maintenance round tries again
        log.exception("index maintenance failed (%s)", what)
        return
    log.info("index maintenance done in %.1f s (%s, %d faces)", time.monotonic() - started, what, index.ntotal)
