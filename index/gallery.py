"""Identity-level search: faces in a `VectorIndex` plus a face_id -> identity_id map, with persistence."""

from __future__ import annotations

import hashlib
import io
import json
import threading
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
    sorted_lookup,
)
from index.brute_force import BruteForceIndex
from index.faiss_index import FaissIndex

__all__ = ["FORMAT_VERSION", "GalleryIndex", "Hit", "IdentityScore"]

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
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


def _make_index(dim: int, backend: Backend, use_gpu: bool | None) -> VectorIndex:
    if backend == "faiss":
        return FaissIndex(dim, use_gpu=use_gpu)
    if backend == "numpy":
        if use_gpu:
            raise ValueError("the numpy backend has no GPU support")
        return BruteForceIndex(dim)
    raise ValueError(f"unknown backend {backend!r}")


class GalleryIndex:
    """Faces keyed by face id (int64 >= 0), each belonging to an identity (int64 >= 0).

    ``identity_score="mean"`` also keeps, per identity, the sum of its face vectors (float64) and an index of their
    normalised means keyed by identity id, updated with every change; searches then rank identities by that mean
    (derived state: snapshots hold only the faces, and `load` rebuilds it).

    Thread safety: every public method takes one re-entrant lock, so concurrent searches and
    mutations are safe but serialised (FAISS still parallelises a batched search internally).
    """

    def __init__(
        self,
        dim: int,
        *,
        backend: Backend = "faiss",
        use_gpu: bool | None = None,
        identity_score: IdentityScore = "best",
    ) -> None:
        if identity_score not in ("best", "mean"):
            raise ValueError(f"identity_score must be 'best' or 'mean', got {identity_score!r}")
        self._lock = threading.RLock()
        self._save_lock = threading.Lock()
        self._backend: Backend = backend
        self._use_gpu = use_gpu
        self._index: VectorIndex = _make_index(dim, backend, use_gpu)
        # Face ids ascending, with each face's identity at the same position.
        self._faces: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._idents: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._identity_score: IdentityScore = identity_score
        self._sums: dict[int, npt.NDArray[np.float64]] = {}
        self._means: VectorIndex | None = _make_index(dim, backend, use_gpu) if identity_score == "mean" else None

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
    def ntotal(self) -> int:
        """Number of faces."""
        with self._lock:
            return self._index.ntotal

    @property
    def n_identities(self) -> int:
        """Number of distinct identities with at least one face."""
        with self._lock:
            if self._means is not None:
                return len(self._sums)
            return int(np.unique(self._idents).size)

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
            faces = np.concatenate([self._faces, fids])
            order = np.argsort(faces, kind="stable")
            self._faces = faces[order]
            self._idents = np.concatenate([self._idents, iids])[order]
            if self._means is not None:
                self._update_means(iids, self._index.reconstruct(fids), sign=1.0)

    def remove_faces(self, face_ids: npt.ArrayLike) -> int:
        """Remove faces by id (N,); returns how many were removed (unknown ids ignored)."""
        fids = as_ids(face_ids, name="face_ids", allow_negative=True)
        with self._lock:
            if self._means is not None:
                _, found = sorted_lookup(self._faces, fids)
                present = np.unique(fids[found])
                gone_idents = self.identities_of(present)
                gone_vectors = self._index.reconstruct(present)
            removed = self._index.remove(fids)
            keep = ~np.isin(self._faces, fids)
            self._faces = self._faces[keep]
            self._idents = self._idents[keep]
            if self._faces.size != self._index.ntotal:
                raise IndexCorruptError("face map and vector index disagree after remove")
            if self._means is not None:
                self._update_means(gone_idents, gone_vectors, sign=-1.0)
            return removed

    def _update_means(self, idents: npt.NDArray[np.int64], x: npt.NDArray[np.float32], *, sign: float) -> None:
        """Add (sign 1) or subtract (-1) face vectors from their identities' sums and re-index those means."""
        assert self._means is not None
        touched, inverse = np.unique(idents, return_inverse=True)
        delta = np.zeros((touched.size, self.dim))
        np.add.at(delta, inverse, sign * x.astype(np.float64))
        for ident, row in zip(touched.tolist(), delta, strict=True):
            self._sums[ident] = self._sums.get(ident, 0.0) + row
        self._means.remove(touched)
        alive = np.isin(touched, self._idents)
        for ident in touched[~alive].tolist():
            self._sums.pop(ident, None)
        keep = touched[alive]
        if keep.size:
            sums = np.stack([self._sums[i] for i in keep.tolist()])
            norms = np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
            self._means.add(keep, (sums / norms).astype(np.float32))

    def remove_identity(self, identity_id: int) -> int:
        """Remove all faces of one identity; returns how many faces were removed."""
        with self._lock:
            return self.remove_faces(self._faces[self._idents == identity_id])

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
            valid = i_row >= 0
            members = np.isin(self._idents, i_row[valid])
            face_ids, owners = self._faces[members], self._idents[members]
            face_scores = self._index.reconstruct(face_ids) @ q[row]
            hits = []
            for ident, score in zip(i_row[valid].tolist(), s_row[valid].tolist(), strict=True):
                own = owners == ident
                best = int(face_ids[own][int(np.argmax(face_scores[own]))])
                hits.append(Hit(int(ident), best, float(score)))
            results.append(hits)
        return results

    def save(self, directory: Path, *, meta: dict[str, Any]) -> None:
        """Write index.faiss, faces.npy (int64 (N, 2): face_id, identity_id), then manifest.json.

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
                    as_faiss = FaissIndex(self.dim, use_gpu=False)
                    as_faiss.add(self._faces, self._index.reconstruct(self._faces))
                    index_bytes = as_faiss.serialize()
                faces_table = np.stack([self._faces, self._idents], axis=1)
                ntotal = int(self._faces.size)
                n_identities = int(np.unique(self._idents).size)
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
        use_gpu: bool | None = None,
        identity_score: IdentityScore = "best",
    ) -> tuple[GalleryIndex, dict[str, Any]]:
        """Read a directory written by `save`; returns (index, meta).

        Raises IndexCorruptError on a missing/unreadable file, bad manifest, checksum mismatch,
        or any disagreement between the manifest, the face table and the vector index.
        """
        directory = Path(directory)
        manifest = _read_manifest(directory / MANIFEST_FILE)
        dim, ntotal = manifest["dim"], manifest["ntotal"]
        index = FaissIndex.load(
            directory / INDEX_FILE,
            expected_sha256=manifest["index_sha256"],
            use_gpu=use_gpu if backend == "faiss" else False,
        )
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
        out = cls(dim, backend=backend, use_gpu=use_gpu, identity_score=identity_score)
        if backend == "faiss":
            out._index = index
        else:
            out._index.add(face_ids, index.reconstruct(face_ids))
        out._faces, out._idents = face_ids, ident_ids
        if out._means is not None and face_ids.size:
            out._update_means(ident_ids, out._index.reconstruct(face_ids), sign=1.0)
        meta: dict[str, Any] = manifest["meta"]
        return out, meta


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
