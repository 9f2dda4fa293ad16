"""Identity-level search: faces in a `VectorIndex` plus a face_id -> identity_id map, with persistence."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from index.base import (
    IndexCorruptError,
    VectorIndex,
    as_ids,
    as_vectors,
    atomic_write_bytes,
    check_k,
    check_parts,
    sorted_lookup,
    unit_means,
)
from index.brute_force import BruteForceIndex
from index.faiss_index import FaissIndex, Tuning

__all__ = ["FORMAT_VERSION", "GalleryIndex", "Hit", "IdentityScore"]

FORMAT_VERSION = 2
INDEX_FILE = "index.npz"
FACES_FILE = "faces.npy"
MANIFEST_FILE = "manifest.json"

Backend = Literal["faiss", "numpy"]
IdentityScore = Literal["best", "mean"]
"""How an identity with several faces scores against a query: its best face ("best"), or the normalised mean of its
faces ("mean": one vector per identity, searched in an index of its own)."""


@dataclass(frozen=True, slots=True)
class Hit:
    """One identity in a search result: its best-scoring face and that face's score."""

    identity_id: int
    face_id: int
    score: float


def _make_index(dim: int, backend: Backend, kind: str, tuning: Tuning | None) -> VectorIndex:
    if backend == "faiss":
        return FaissIndex(dim, kind=kind, tuning=tuning)
    if backend == "numpy":
        if kind != "flat":
            raise ValueError("the numpy backend is exact: its only kind is 'flat'")
        return BruteForceIndex(dim)
    raise ValueError(f"unknown backend {backend!r}")


class _Members:
    """Each identity's face ids: two aligned int64 arrays sorted by identity (an identity's faces in the order they
    were added), 16 bytes a face where a dict of lists costs about 60 (0.12x the float32 vectors of 128-d faces)."""

    def __init__(self) -> None:
        self._idents: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._faces: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._count = 0

    def __len__(self) -> int:
        """Distinct identities."""
        return self._count

    def has(self, idents: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """bool (N,): which identities hold at least one face."""
        return sorted_lookup(self._idents, idents)[1]

    def of(self, ident: int) -> npt.NDArray[np.int64]:
        """The face ids (a copy) of one identity; empty if it has none."""
        lo = int(np.searchsorted(self._idents, ident, side="left"))
        hi = int(np.searchsorted(self._idents, ident, side="right"))
        return self._faces[lo:hi].copy()

    def faces_of(self, idents: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]:
        """Every face id of ``idents`` (N,) (unique) and, for each, the index in ``idents`` it belongs to."""
        positions, owner = self._positions(idents)
        return self._faces[positions], owner

    def _positions(self, idents: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        lo = np.searchsorted(self._idents, idents, side="left")
        counts = np.searchsorted(self._idents, idents, side="right") - lo
        owner = np.repeat(np.arange(idents.size), counts)
        starts = np.cumsum(counts) - counts
        return np.repeat(lo, counts) + np.arange(int(counts.sum())) - np.repeat(starts, counts), owner

    def add(self, idents: npt.NDArray[np.int64], faces: npt.NDArray[np.int64]) -> None:
        """Add faces (N,) of identities (N,)."""
        order = np.argsort(idents, kind="stable")
        new_idents, new_faces = idents[order], faces[order]
        people = np.unique(new_idents)
        self._count += int((~self.has(people)).sum())
        at = np.searchsorted(self._idents, new_idents, side="right")
        self._idents = np.insert(self._idents, at, new_idents)
        self._faces = np.insert(self._faces, at, new_faces)

    def remove(self, idents: npt.NDArray[np.int64], faces: npt.NDArray[np.int64]) -> None:
        """Remove faces (N,), each stored under the identity at the same position of ``idents`` (N,)."""
        people = np.unique(idents)
        pos, _ = self._positions(people)
        drop = pos[np.isin(self._faces[pos], faces)]
        self._idents = np.delete(self._idents, drop)
        self._faces = np.delete(self._faces, drop)
        self._count -= int((~self.has(people)).sum())


@dataclass(frozen=True, slots=True)
class _Change:
    """A change made while a compaction builds its new indexes, replayed onto them before they take over."""

    target: Literal["faces", "means"]
    ids: npt.NDArray[np.int64]
    x: npt.NDArray[np.float32] | None
    """None for a removal."""


class GalleryIndex:
    """Faces keyed by face id (int64 >= 0), each belonging to an identity (int64 >= 0).

    ``identity_score="mean"`` also keeps an index of each identity's normalised mean face keyed by identity id,
    recomputed for the identities each change touches; searches then rank identities by that mean (derived state:
    snapshots hold only the faces, and `load` rebuilds it).

    ``mean_parts``: the vectors are fusions of independently normalised parts of these dims (a model card's
    `parts`); each identity's mean is then normalised part by part (`index.base.unit_means`).

    ``kind`` names the FAISS index kind (`index.faiss_index.KINDS`) of both indexes; `compact` rebuilds them, in
    the same or another kind, while searches and changes go on.

    Thread safety: every public method takes one re-entrant lock, so concurrent searches and
    mutations are safe but serialised (FAISS still parallelises a batched search internally).
    """

    def __init__(
        self,
        dim: int,
        *,
        backend: Backend = "faiss",
        kind: str = "flat",
        tuning: Tuning | None = None,
        identity_score: IdentityScore = "best",
        mean_parts: Sequence[int] | None = None,
    ) -> None:
        if identity_score not in ("best", "mean"):
            raise ValueError(f"identity_score must be 'best' or 'mean', got {identity_score!r}")
        self._lock = threading.RLock()
        self._save_lock = threading.Lock()
        self._compact_lock = threading.Lock()
        self._backend: Backend = backend
        self._kind = kind
        self._tuning = tuning
        self._index: VectorIndex = _make_index(dim, backend, kind, tuning)
        # Face ids ascending, with each face's identity at the same position.
        self._faces: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._idents: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        # identity -> its face ids, so that an identity's faces are found without scanning every face
        self._members = _Members()
        self._identity_score: IdentityScore = identity_score
        self._mean_parts = check_parts(mean_parts, dim)
        self._means: VectorIndex | None = _make_index(dim, backend, kind, tuning) if identity_score == "mean" else None
        self._journal: list[_Change] | None = None  # recording while a compaction builds

    @property
    def identity_score(self) -> IdentityScore:
        """How identities with several faces are scored."""
        return self._identity_score

    @property
    def dim(self) -> int:
        """Vector dimensionality."""
        return self._index.dim

    @property
    def backend(self) -> Backend:
        """Which `VectorIndex` implementation stores the faces."""
        return self._backend

    @property
    def kind(self) -> str:
        """The FAISS index kind of the face (and mean) index."""
        return self._kind

    @property
    def needs_compaction(self) -> bool:
        """Whether tombstones, staged vectors or stale IVF training make `compact` worth its cost."""
        with self._lock:
            return any(isinstance(ix, FaissIndex) and ix.needs_compaction for ix in (self._index, self._means))

    @property
    def ntotal(self) -> int:
        """Number of faces."""
        with self._lock:
            return self._index.ntotal

    @property
    def n_identities(self) -> int:
        """Number of distinct identities with at least one face."""
        with self._lock:
            return len(self._members)

    @property
    def n_compared(self) -> int:
        """How many vectors a query is compared with: identities ("mean") or faces ("best")."""
        return self.n_identities if self._means is not None else self.ntotal

    def face_ids(self) -> npt.NDArray[np.int64]:
        """All face ids, int64 (ntotal,), ascending."""
        with self._lock:
            return self._faces.copy()

    def contains(self, face_ids: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """bool (N,): which of face_ids int64 (N,) are stored."""
        fids = as_ids(face_ids, name="face_ids", allow_negative=True)
        with self._lock:
            return sorted_lookup(self._faces, fids)[1]

    def identities_of(self, face_ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Identity ids int64 (N,) for face ids int64 (N,); -1 where a face is unknown."""
        fids = as_ids(face_ids, name="face_ids", allow_negative=True)
        with self._lock:
            pos, found = sorted_lookup(self._faces, fids)
            if not self._idents.size:
                return np.full(fids.shape, -1, dtype=np.int64)
            return np.where(found, self._idents[pos], -1)

    def add(self, face_ids: npt.ArrayLike, identity_ids: npt.ArrayLike, x: npt.ArrayLike) -> None:
        """Add faces: face_ids int64 (N,), identity_ids int64 (N,), x float32 (N, dim).

        Raises ValueError and changes nothing on bad shapes, negative ids, or a face id that is
        already present or repeated.
        """
        fids = as_ids(face_ids, name="face_ids")
        iids = as_ids(identity_ids, name="identity_ids")
        if fids.shape != iids.shape:
            raise ValueError(f"face_ids {fids.shape} and identity_ids {iids.shape} differ in shape")
        with self._lock:
            self._index.add(fids, x)
            self._record("faces", fids, as_vectors(x, self.dim))
            faces = np.concatenate([self._faces, fids])
            idents = np.concatenate([self._idents, iids])
            if self._faces.size and fids.size and int(fids.min()) <= int(self._faces[-1]):
                order = np.argsort(faces, kind="stable")
                faces, idents = faces[order], idents[order]
            elif fids.size > 1:  # new ids beyond every stored one (the usual case): only they need sorting
                tail = np.argsort(fids, kind="stable") + self._faces.size
                order = np.concatenate([np.arange(self._faces.size), tail])
                faces, idents = faces[order], idents[order]
            self._faces, self._idents = faces, idents
            self._members.add(iids, fids)
            if self._means is not None:
                self._update_means(iids)

    def remove_faces(self, face_ids: npt.ArrayLike) -> int:
        """Remove faces by id (N,); returns how many were removed (unknown ids ignored)."""
        fids = as_ids(face_ids, name="face_ids", allow_negative=True)
        with self._lock:
            pos, found = sorted_lookup(self._faces, fids)
            present = np.unique(fids[found])
            gone_idents = self.identities_of(present)
            removed = self._index.remove(present)
            self._record("faces", present, None)
            self._faces = np.delete(self._faces, np.unique(pos[found]))
            self._idents = np.delete(self._idents, np.unique(pos[found]))
            if self._faces.size != self._index.ntotal:
                raise IndexCorruptError("face map and vector index disagree after remove")
            self._members.remove(gone_idents, present)
            if self._means is not None:
                self._update_means(gone_idents)
            return removed

    def _record(self, target: Literal["faces", "means"], ids: npt.NDArray[np.int64], x: np.ndarray | None) -> None:
        if self._journal is not None and ids.size:
            self._journal.append(_Change(target, ids.copy(), None if x is None else np.array(x, dtype=np.float32)))

    def _update_means(self, idents: npt.NDArray[np.int64]) -> None:
        """Recompute the means of these identities from the faces they hold now, and re-index them.

        Recomputing (rather than keeping running sums) keeps no per-identity state beyond the index, cannot drift,
        and costs one reconstruction of the touched identities' faces.
        """
        assert self._means is not None
        touched = np.unique(idents)
        self._means.remove(touched)
        self._record("means", touched, None)
        keep = touched[self._members.has(touched)]
        if not keep.size:
            return
        faces, owner = self._members.faces_of(keep)
        sums = np.zeros((keep.size, self.dim), dtype=np.float64)
        np.add.at(sums, owner, self._index.reconstruct(faces))
        means = unit_means(sums, self._mean_parts)
        self._means.add(keep, means)
        self._record("means", keep, means)

    def remove_identity(self, identity_id: int) -> int:
        """Remove all faces of one identity; returns how many faces were removed."""
        with self._lock:
            return self.remove_faces(self._members.of(int(identity_id)))

    def search(self, xq: npt.ArrayLike, k: int, *, by: IdentityScore | None = None) -> list[list[Hit]]:
        """Up to k distinct identities per query xq float32 (M, dim), best first.

        An identity's score is the best score among its faces (or, with ``identity_score="mean"`` unless ``by`` is
        "best", the score of the normalised mean of its faces), and `Hit.face_id` is its best face for the query.
        Order among exactly tied identities is unspecified.
        """
        k = check_k(k)
        q = as_vectors(xq, self.dim, name="xq")
        m = q.shape[0]
        results: list[list[Hit]] = [[] for _ in range(m)]
        with self._lock:
            n = self._index.ntotal
            if n == 0 or m == 0:
                return results
            if self._means is not None and by != "best":
                return self._search_means(q, k)
            pending = np.arange(m)
            fetch = min(n, k * 4)
            # The faces fetched are a prefix of the global face ranking, so the first occurrence
            # of an identity in it is that identity's best face, and any identity not seen yet
            # scores no higher than the last face fetched. Once k distinct identities appear
            # (or all faces were fetched), those are the exact top k.
            while pending.size:
                f_scores, f_ids = self._index.search(q[pending], fetch)
                pos, found = sorted_lookup(self._faces, f_ids.ravel())
                valid = (f_ids.ravel() >= 0) & found
                if not np.array_equal(valid, f_ids.ravel() >= 0):
                    raise IndexCorruptError("vector index returned a face id missing from the face map")
                idents = np.where(valid, self._idents[pos], -1).reshape(f_ids.shape)
                still: list[int] = []
                for row, qi in enumerate(pending.tolist()):
                    hits = _distinct_identities(f_scores[row], f_ids[row], idents[row], k)
                    if len(hits) == k or fetch >= n:
                        results[qi] = hits
                    else:
                        still.append(qi)
                pending = np.asarray(still, dtype=np.intp)
                fetch = min(n, fetch * 2)
            return results

    def _search_means(self, q: npt.NDArray[np.float32], k: int) -> list[list[Hit]]:
        """Top-k identities by their mean face; each hit names the identity's best face for that query."""
        assert self._means is not None
        scores, ids = self._means.search(q, min(k, self._means.ntotal))
        results: list[list[Hit]] = []
        for row, (s_row, i_row) in enumerate(zip(scores, ids, strict=True)):
            hits = []
            for ident, score in zip(i_row.tolist(), s_row.tolist(), strict=True):
                if ident < 0:
                    continue
                face_ids = self._members.of(ident)
                best = int(face_ids[int(np.argmax(self._index.reconstruct(face_ids) @ q[row]))])
                hits.append(Hit(int(ident), best, float(score)))
            results.append(hits)
        return results

    def compact(self, *, kind: str | None = None) -> bool:
        """Rebuild the face and mean indexes from their live vectors, as ``kind`` (default: the current one).

        The build runs outside the lock, so searches and changes go on; changes made meanwhile are recorded and
        replayed onto the new indexes, which then take over in one step. Returns False (doing nothing) when
        another compaction is running or the backend is not FAISS.
        """
        if self._backend != "faiss" or not self._compact_lock.acquire(blocking=False):
            return False
        try:
            new_kind = kind or self._kind
            with self._lock:
                faces = _snapshot(self._index)
                means = _snapshot(self._means) if self._means is not None else None
                self._journal = []
            try:
                new_index = _build(self.dim, new_kind, self._tuning, faces)
                new_means = _build(self.dim, new_kind, self._tuning, means) if means is not None else None
            except BaseException:
                with self._lock:
                    self._journal = None
                raise
            with self._lock:
                for change in self._journal:
                    target = new_index if change.target == "faces" else new_means
                    assert target is not None
                    if change.x is None:
                        target.remove(change.ids)
                    else:
                        target.add(change.ids, change.x)
                self._journal = None
                if new_index.ntotal != self._index.ntotal:
                    raise IndexCorruptError("compacted index disagrees with the live one")
                self._index, self._means, self._kind = new_index, new_means, new_kind
            return True
        finally:
            self._compact_lock.release()

    def save(self, directory: Path, *, meta: dict[str, Any]) -> None:
        """Write index.npz, faces.npy (int64 (N, 2): face_id, identity_id), then manifest.json.

        Each file is replaced atomically and the manifest (format version, dim, counts, sha256 of
        both data files, and `meta`, which must be JSON-serialisable) is written last, so a crash
        mid-save leaves a directory that `load` either accepts whole or rejects with
        IndexCorruptError, never a silently mixed one.
        """
        json.dumps(meta)  # fail on unserialisable meta before touching any file
        directory = Path(directory)
        with self._save_lock:
            with self._lock:
                if isinstance(self._index, FaissIndex):
                    index_bytes = self._index.serialize()
                else:
                    as_faiss = FaissIndex.from_vectors(self._faces, self._index.reconstruct(self._faces))
                    index_bytes = as_faiss.serialize()
                faces_table = np.stack([self._faces, self._idents], axis=1)
                ntotal = int(self._faces.size)
                n_identities = len(self._members)
            buf = io.BytesIO()
            np.save(buf, faces_table, allow_pickle=False)
            directory.mkdir(parents=True, exist_ok=True)
            manifest = {
                "format_version": FORMAT_VERSION,
                "dim": self.dim,
                "ntotal": ntotal,
                "n_identities": n_identities,
                "index_sha256": atomic_write_bytes(directory / INDEX_FILE, index_bytes.data),
                "faces_sha256": atomic_write_bytes(directory / FACES_FILE, buf.getbuffer()),
                "meta": meta,
            }
            atomic_write_bytes(directory / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True).encode())

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        backend: Backend = "faiss",
        identity_score: IdentityScore = "best",
        tuning: Tuning | None = None,
        mean_parts: Sequence[int] | None = None,
    ) -> tuple[GalleryIndex, dict[str, Any]]:
        """Read a directory written by `save`; returns (index, meta). The index keeps the kind it was saved as, and
        searches with the search parameters of `tuning` when given.

        Raises IndexCorruptError on a missing/unreadable file, bad manifest, checksum mismatch,
        or any disagreement between the manifest, the face table and the vector index.
        """
        directory = Path(directory)
        manifest = _read_manifest(directory / MANIFEST_FILE)
        dim, ntotal = manifest["dim"], manifest["ntotal"]
        index = FaissIndex.load(directory / INDEX_FILE, expected_sha256=manifest["index_sha256"])
        faces = _read_faces(directory / FACES_FILE, manifest["faces_sha256"])
        if index.dim != dim:
            raise IndexCorruptError(f"index dim {index.dim} != manifest dim {dim}")
        if not index.ntotal == faces.shape[0] == ntotal:
            raise IndexCorruptError(f"counts disagree: index {index.ntotal}, faces {faces.shape[0]}, manifest {ntotal}")
        order = np.argsort(faces[:, 0], kind="stable")
        face_ids, ident_ids = faces[order, 0].copy(), faces[order, 1].copy()
        if not np.array_equal(face_ids, index.ids()):
            raise IndexCorruptError("face table ids differ from the vector index ids")
        if ident_ids.size and int(ident_ids.min()) < 0:
            raise IndexCorruptError("negative identity id in face table")
        if int(np.unique(ident_ids).size) != manifest["n_identities"]:
            raise IndexCorruptError("identity count differs from manifest")
        if tuning is not None:
            index.set_search_tuning(tuning)
        if backend == "faiss":
            out = cls(
                dim,
                backend=backend,
                kind=index.kind,
                tuning=index.tuning,
                identity_score=identity_score,
                mean_parts=mean_parts,
            )
            out._index = index
        else:
            out = cls(dim, backend=backend, identity_score=identity_score, mean_parts=mean_parts)
            out._index.add(face_ids, index.reconstruct(face_ids))
        out._faces, out._idents = face_ids, ident_ids
        out._members.add(ident_ids, face_ids)
        if out._means is not None and face_ids.size:
            out._update_means(ident_ids)
        meta: dict[str, Any] = manifest["meta"]
        return out, meta


def _snapshot(index: VectorIndex) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    ids = index.ids()
    return ids, index.reconstruct(ids)


def _build(
    dim: int, kind: str, tuning: Tuning | None, vectors: tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]
) -> FaissIndex:
    ids, x = vectors
    return FaissIndex.from_vectors(ids, x, dim=dim, kind=kind, tuning=tuning)


def _distinct_identities(
    scores: npt.NDArray[np.float32], faces: npt.NDArray[np.int64], idents: npt.NDArray[np.int64], k: int
) -> list[Hit]:
    """First k distinct identities of one result row (scores descending, -1 = empty slot)."""
    valid = faces >= 0
    scores, faces, idents = scores[valid], faces[valid], idents[valid]
    _, first = np.unique(idents, return_index=True)
    first = np.sort(first)[:k]
    return [Hit(int(idents[j]), int(faces[j]), float(scores[j])) for j in first]


_MANIFEST_TYPES: dict[str, type] = {
    "format_version": int,
    "dim": int,
    "ntotal": int,
    "n_identities": int,
    "index_sha256": str,
    "faces_sha256": str,
    "meta": dict,
}


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_bytes())
    except OSError as exc:
        raise IndexCorruptError(f"cannot read {path}: {exc}") from exc
    except ValueError as exc:
        raise IndexCorruptError(f"bad JSON in {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise IndexCorruptError(f"{path} is not a JSON object")
    for key, typ in _MANIFEST_TYPES.items():
        value = manifest.get(key)
        # bool is an int subclass; reject it explicitly.
        if not isinstance(value, typ) or isinstance(value, bool):
            raise IndexCorruptError(f"{path}: missing or mistyped {key!r}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise IndexCorruptError(f"{path}: unsupported format_version {manifest['format_version']}")
    if manifest["dim"] < 1 or manifest["ntotal"] < 0:
        raise IndexCorruptError(f"{path}: bad dim or ntotal")
    return manifest


def _read_faces(path: Path, expected_sha256: str) -> npt.NDArray[np.int64]:
    """The face table int64 (N, 2) from `path`, checksum-verified."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IndexCorruptError(f"cannot read {path}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise IndexCorruptError(f"sha256 mismatch for {path}")
    try:
        faces = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise IndexCorruptError(f"unreadable face table {path}: {exc}") from exc
    if not isinstance(faces, np.ndarray) or faces.dtype != np.int64 or faces.ndim != 2 or faces.shape[1] != 2:
        raise IndexCorruptError(f"{path}: expected an int64 (N, 2) array")
    return faces
