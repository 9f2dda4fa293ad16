"""FAISS-backed `VectorIndex`: an exact IndexIDMap2(IndexFlatIP) master on CPU, optional GPU replica."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from index.base import (
    IndexCorruptError,
    as_ids,
    as_vectors,
    atomic_write_bytes,
    check_k,
    sorted_lookup,
)

__all__ = ["FaissIndex"]

# Largest k the FAISS GPU k-selection supports; bigger searches go to the CPU master.
_GPU_MAX_K = 2048


def gpu_available() -> bool:
    """True if this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and int(faiss.get_num_gpus()) > 0


class _GpuReplica:
    """Read-only GPU copy of the master's flat storage, used for search only.

    FAISS GPU indexes support neither remove_ids nor (for GpuIndexFlat) add_with_ids, so the CPU
    master stays authoritative. The replica holds vectors in the master's positional order plus
    a position -> id array, and is rebuilt from scratch on the next search after any change.
    """

    def __init__(self) -> None:
        self._res: Any = faiss.StandardGpuResources()
        self._index: Any = None
        self._pos_to_id: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)

    def invalidate(self) -> None:
        self._index = None

    def search(
        self, master: Any, xq: npt.NDArray[np.float32], k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Raw FAISS-style results for 1 <= k <= master.ntotal (ids -1 where FAISS found nothing)."""
        if self._index is None:
            self._index = faiss.index_cpu_to_gpu(self._res, 0, faiss.downcast_index(master.index))
            self._pos_to_id = faiss.vector_to_array(master.id_map).astype(np.int64)
        scores, pos = self._index.search(xq, k)
        pos = np.asarray(pos, dtype=np.int64)
        ids = np.where(pos >= 0, self._pos_to_id[np.maximum(pos, 0)], -1)
        return np.asarray(scores, dtype=np.float32), ids


class FaissIndex:
    """`VectorIndex` over `faiss.IndexIDMap2(faiss.IndexFlatIP(dim))`, keyed by the caller's ids.

    use_gpu: None = use a GPU search replica if one is available, True = require one
    (RuntimeError otherwise), False = CPU only. Not thread-safe; callers serialise access.
    """

    def __init__(self, dim: int, *, use_gpu: bool | None = None) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self._dim = dim
        self._master: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        # Sorted copy of the stored ids for O(log n) duplicate checks without a Python set.
        self._sorted_ids: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        if use_gpu is None:
            use_gpu = gpu_available()
        elif use_gpu and not gpu_available():
            raise RuntimeError("use_gpu=True but this faiss build has no GPU support or sees no GPU")
        self._gpu: _GpuReplica | None = _GpuReplica() if use_gpu else None

    @property
    def dim(self) -> int:
        """Vector dimensionality."""
        return self._dim

    @property
    def ntotal(self) -> int:
        """Number of stored vectors."""
        return int(self._master.ntotal)

    @property
    def uses_gpu(self) -> bool:
        """Whether searches go to a GPU replica."""
        return self._gpu is not None

    def add(self, ids: npt.ArrayLike, x: npt.ArrayLike) -> None:
        """Add ids int64 (N,) >= 0 with vectors float32 (N, dim); ValueError (no change) on bad input."""
        ids_arr = as_ids(ids)
        x_arr = as_vectors(x, self._dim)
        if x_arr.shape[0] != ids_arr.shape[0]:
            raise ValueError(f"got {ids_arr.shape[0]} ids for {x_arr.shape[0]} vectors")
        if ids_arr.size == 0:
            return
        uniq = np.unique(ids_arr)
        if uniq.size != ids_arr.size:
            raise ValueError("ids repeated within one add() call")
        _, present = sorted_lookup(self._sorted_ids, ids_arr)
        if present.any():
            raise ValueError(f"ids already present: {ids_arr[present][:10].tolist()}")
        self._master.add_with_ids(x_arr, ids_arr)
        self._sorted_ids = np.union1d(self._sorted_ids, uniq)
        self._invalidate_gpu()

    def remove(self, ids: npt.ArrayLike) -> int:
        """Remove ids int64 (N,); returns the number removed (unknown ids ignored)."""
        present = np.intersect1d(self._sorted_ids, as_ids(ids, allow_negative=True))
        if present.size == 0:
            return 0
        removed = int(self._master.remove_ids(present))
        self._sorted_ids = np.setdiff1d(self._sorted_ids, present, assume_unique=True)
        self._invalidate_gpu()
        if removed != present.size:
            raise IndexCorruptError(f"faiss removed {removed} of {present.size} ids known to be present")
        return removed

    def search(self, xq: npt.ArrayLike, k: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Top-k for xq float32 (M, dim): scores float32 (M, k) descending, ids int64 (M, k); -1/-inf pads."""
        k = check_k(k)
        q = as_vectors(xq, self._dim, name="xq")
        m = q.shape[0]
        scores = np.full((m, k), -np.inf, dtype=np.float32)
        out_ids = np.full((m, k), -1, dtype=np.int64)
        # Never ask FAISS for more than it holds: keeps allocations small and GPU k limits simple.
        kk = min(k, self.ntotal)
        if kk == 0 or m == 0:
            return scores, out_ids
        if self._gpu is not None and kk <= _GPU_MAX_K:
            s, i = self._gpu.search(self._master, q, kk)
        else:
            raw_s, raw_i = self._master.search(q, kk)
            s, i = np.asarray(raw_s, dtype=np.float32), np.asarray(raw_i, dtype=np.int64)
        empty = i < 0
        scores[:, :kk] = np.where(empty, np.float32(-np.inf), s)  # FAISS pads with -FLT_MAX
        out_ids[:, :kk] = np.where(empty, -1, i)
        return scores, out_ids

    def ids(self) -> npt.NDArray[np.int64]:
        """All stored ids, int64 (ntotal,), ascending (a copy)."""
        return self._sorted_ids.copy()

    def reconstruct(self, ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Stored vectors float32 (N, dim) for ids int64 (N,); KeyError if any id is absent."""
        ids_arr = as_ids(ids, allow_negative=True)
        _, found = sorted_lookup(self._sorted_ids, ids_arr)
        if not found.all():
            raise KeyError(f"ids not in index: {ids_arr[~found][:10].tolist()}")
        if ids_arr.size == 0:
            return np.empty((0, self._dim), dtype=np.float32)
        return np.asarray(self._master.reconstruct_batch(ids_arr), dtype=np.float32).reshape(-1, self._dim)

    def reset(self) -> None:
        """Remove everything."""
        self._master.reset()
        self._sorted_ids = np.empty(0, dtype=np.int64)
        self._invalidate_gpu()

    def serialize(self) -> npt.NDArray[np.uint8]:
        """The master index in `faiss.write_index` format, uint8 (nbytes,)."""
        return np.asarray(faiss.serialize_index(self._master), dtype=np.uint8)

    @classmethod
    def deserialize(cls, data: bytes | npt.NDArray[np.uint8], *, use_gpu: bool | None = None) -> FaissIndex:
        """Inverse of `serialize`; IndexCorruptError if unreadable or not IndexIDMap2(IndexFlatIP)."""
        buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
        try:
            raw: Any = faiss.deserialize_index(buf)
        except (RuntimeError, MemoryError) as exc:  # truncated/garbage data, absurd sizes
            raise IndexCorruptError(f"unreadable faiss index: {exc}") from exc
        master: Any = faiss.downcast_index(raw)
        # downcast_index returns a non-owning proxy; move ownership so the index outlives `raw`.
        raw.this.disown()
        master.this.acquire()
        if not isinstance(master, faiss.IndexIDMap2):
            raise IndexCorruptError(f"expected IndexIDMap2, got {type(master).__name__}")
        flat = faiss.downcast_index(master.index)
        if not isinstance(flat, faiss.IndexFlat) or flat.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexCorruptError(f"expected an inner-product IndexFlat inside, got {type(flat).__name__}")
        ids = faiss.vector_to_array(master.id_map).astype(np.int64)
        sorted_ids = np.unique(ids)
        if ids.size != master.ntotal or sorted_ids.size != ids.size or (ids.size and sorted_ids[0] < 0):
            raise IndexCorruptError("faiss index ids are inconsistent (count, duplicates or negatives)")
        out = cls(int(master.d), use_gpu=use_gpu)
        out._master = master
        out._sorted_ids = sorted_ids
        return out

    def save(self, path: Path) -> str:
        """Atomically write the index to `path`; returns the sha256 hex of the bytes written."""
        return atomic_write_bytes(path, self.serialize().data)

    @classmethod
    def load(cls, path: Path, *, expected_sha256: str | None = None, use_gpu: bool | None = None) -> FaissIndex:
        """Read an index written by `save`; IndexCorruptError on I/O error, checksum mismatch or bad type."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise IndexCorruptError(f"cannot read {path}: {exc}") from exc
        if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
            raise IndexCorruptError(f"sha256 mismatch for {path}")
        return cls.deserialize(data, use_gpu=use_gpu)

    def _invalidate_gpu(self) -> None:
        if self._gpu is not None:
            self._gpu.invalidate()


def set_search_threads(n: int) -> None:
    """Set FAISS's OpenMP thread count for this process (n >= 1).

    A server answering many single-query searches at once gets its parallelism from concurrent requests;
    more OpenMP threads than free cores then only adds spin-waiting, so 1 is the serving default.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    faiss.omp_set_num_threads(n)
