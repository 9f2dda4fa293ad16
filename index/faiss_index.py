"""FAISS-backed `VectorIndex` in several kinds: exact float32, scalar-quantised flat (fp16, int8), HNSW, and PQ
fast-scan (every code, or IVF lists of them) with exact re-ranking on the CPU; flat fp16 and IVF on a GPU.

Every kind applies adds and removals at once, without a rebuild:

- adds go straight into the kind's structure (HNSW links them in, IVF assigns them to a list); a kind that must be
  trained first keeps its vectors in a small exact *staging* index until it holds ``min_train`` of them;
- removals use FAISS's own ``remove_ids`` where the structure supports it and otherwise leave a *tombstone*: the
  vector stays in the structure, invisible to searches (an ``IDSelector`` inside HNSW, or over-fetching and
  filtering elsewhere), until `FaissIndex.compacted` builds a fresh index of the live vectors;
- a GPU kind keeps an exact float32 master on the host (removal, reconstruction, snapshots) and a device copy for
  search; adds are appended to the device copy and removals are masked there, so a change never copies the gallery.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import asdict, dataclass, replace
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

__all__ = ["KINDS", "FaissIndex", "IndexKind", "Tuning", "auto_nprobe", "gpu_available", "set_search_threads"]

# FAISS's bundled type stubs lag its SWIG API (overloads, newer classes); these calls go through an untyped alias.
_faiss: Any = faiss

# Largest k the FAISS GPU k-selection supports; bigger searches go to the host master.
_GPU_MAX_K = 2048


@dataclass(frozen=True, slots=True)
class IndexKind:
    """How one kind of index stores vectors and handles change."""

    name: str
    summary: str
    approximate: bool
    """Whether search may miss a true neighbour (scalar quantisation only perturbs scores, so fp16/sq8 are not)."""
    gpu: bool
    min_train: int
    """Vectors needed before the structure can be trained; 0 = no training."""
    native_remove: bool
    """FAISS removes vectors from the structure itself; otherwise removals are tombstones until compaction."""
    selector: bool
    """Tombstones are filtered inside the search by an IDSelector (otherwise by over-fetching)."""


def _kind(
    name: str,
    summary: str,
    *,
    approximate: bool = False,
    gpu: bool = False,
    min_train: int = 0,
    native_remove: bool = True,
    selector: bool = False,
) -> IndexKind:
    return IndexKind(name, summary, approximate, gpu, min_train, native_remove, selector)


KINDS: dict[str, IndexKind] = {
    k.name: k
    for k in (
        _kind("flat", "exact float32 (IndexFlatIP)"),
        _kind("fp16", "exact search over float16 vectors (IndexScalarQuantizer fp16)"),
        _kind("sq8", "exact search over int8 vectors (IndexScalarQuantizer 8-bit)", min_train=1000),
        _kind(
            "hnsw",
            "HNSW graph over float16 vectors (IndexHNSWSQ fp16)",
            approximate=True,
            native_remove=False,
            selector=True,
        ),
        _kind(
            "pq",
            "4-bit PQ codes of every vector, all scanned by SIMD fast-scan (no partition to miss a neighbour in);"
            " the short list re-ranked exactly from float32 (PQx4fs,RFlat; PCAR128 first for vectors wider than 128-d)",
            approximate=True,
            min_train=10_000,
            native_remove=False,
        ),
        _kind(
            "ivfpq",
            "IVF lists of 4-bit PQ codes of PCA-reduced vectors, scanned by SIMD fast-scan; the short list re-ranked"
            " exactly from float32 (PCAR,IVF,PQx4fs,RFlat)",
            approximate=True,
            min_train=10_000,
            native_remove=False,
        ),
        _kind("gpu_flat", "exact search over float16 vectors on a GPU (GpuIndexFlatIP)", gpu=True),
        _kind("gpu_ivf", "IVF-flat on a GPU (GpuIndexIVFFlat)", approximate=True, gpu=True, min_train=10_000),
    )
}
"""Every kind by name."""


@dataclass(frozen=True, slots=True)
class Tuning:
    """Build and search parameters of the approximate kinds (see benchmarks/README.md for how they were chosen)."""

    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 256
    nprobe: int = 0
    """IVF kinds: lists scanned per search (of about 4 sqrt(n) for n vectors); 0 = `auto_nprobe`."""
    rerank: int = 700
    """pq and ivfpq: candidates re-ranked exactly from float32 (at least ``k_factor`` per result asked for); pq
    re-ranks ``rerank`` per `PQ_MAX_DIM` dimensions of the vectors (twice as many for 256-d, whose codes lost half)."""
    k_factor: int = 2


# The automatic IVF search effort: at least AUTO_NPROBE_MIN lists (all of them up to ~100,000 vectors) and
# AUTO_NPROBE_SHARE of the lists beyond, the share that gives recall@1 0.994 at 1M faces (benchmarks/README.md);
# with a fixed count a growing gallery would scan an ever smaller share and lose recall.
AUTO_NPROBE_MIN = 1280
AUTO_NPROBE_SHARE = 0.32

# The widest vectors the pq kind codes as they are; wider ones (a fusion's 256-d) are PCA-reduced to this many
# dimensions first, so that a search scans 128-d codes whatever the model (benchmarks/README.md, search_scale).
PQ_MAX_DIM = 128


def auto_nprobe(tuning: Tuning, nlist: int, *, gpu: bool = False) -> int:
    """Lists to scan of `nlist`: ``tuning.nprobe`` if set, else the automatic effort (capped by the GPU's limit)."""
    n = tuning.nprobe or max(AUTO_NPROBE_MIN, int(np.ceil(AUTO_NPROBE_SHARE * nlist)))
    return min(n, nlist, _GPU_MAX_K) if gpu else min(n, nlist)


def gpu_available() -> bool:
    """True if this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and int(faiss.get_num_gpus()) > 0


def _nlist(n: int) -> int:
    """IVF lists for n training vectors: about 4 sqrt(n), at least 16."""
    return int(max(16, min(65536, 4 * np.sqrt(max(n, 1)))))


def _exact(dim: int) -> Any:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _new_main(kind: IndexKind, dim: int, tuning: Tuning, n_train: int) -> Any:
    """An empty (untrained) structure of `kind`, keyed by caller ids."""
    ip = faiss.METRIC_INNER_PRODUCT
    if kind.name in ("flat", "gpu_flat", "gpu_ivf"):  # GPU kinds: the host master is exact
        return _exact(dim)
    if kind.name == "fp16":
        return faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, ip))
    if kind.name == "sq8":
        return faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, ip))
    if kind.name == "hnsw":
        hnsw = _faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, tuning.hnsw_m, ip)
        hnsw.hnsw.efConstruction = tuning.ef_construction
        return faiss.IndexIDMap2(hnsw)
    if kind.name == "pq":
        return faiss.IndexIDMap2(faiss.index_factory(dim, _pq_spec(dim), ip))
    if kind.name == "ivfpq":
        return faiss.IndexIDMap2(faiss.index_factory(dim, _ivfpq_spec(dim, _nlist(n_train)), ip))
    raise ValueError(f"unknown index kind {kind.name!r}")


def _pq_spec(dim: int) -> str:
    """The pq structure for `dim`: 4-bit codes of 2 dimensions each (32 bytes for 128-d), float32 re-ranking.

    At 1M realistic 128-d faces, scanning every code beat scanning a third of IVF lists for time and recall alike
    (benchmarks/README.md): a stranger's nearest face is barely nearer than thousands of others, in any list.
    Wider vectors (a fusion's 256-d) are first PCA-rotated to `PQ_MAX_DIM` dimensions, so that their codes cost
    what 128-d ones do; the re-ranking reads the full vectors, so reported scores stay exact cosines.
    """
    reduced = min(dim, PQ_MAX_DIM)
    subquantizers = reduced // 2 if reduced % 2 == 0 else reduced
    pca = f"PCAR{reduced}," if reduced < dim else ""
    return f"{pca}PQ{subquantizers}x4fs,RFlat"


def _rerank_factor(kind: IndexKind, dim: int) -> int:
    """How many times `Tuning.rerank` candidates a search re-ranks: pq codes of PCA-reduced vectors rank the true
    nearest face lower, so a 256-d fusion re-ranks twice the short list (at 1M faces recall@1 1.000 in 1.53 ms,
    against 0.997 in 1.29 ms with 700 candidates; 128-d SFace with 700: 0.999; benchmarks/README.md)."""
    return -(-dim // PQ_MAX_DIM) if kind.name == "pq" else 1


def _ivfpq_spec(dim: int, nlist: int) -> str:
    """The ivfpq structure for `dim`: a PCA to about 3/4 of the dimensions (with a random rotation, so that every
    4-bit sub-quantizer gets a like share of the variance), 2 dimensions per sub-quantizer, float32 re-ranking.

    At 1M realistic 128-d faces this beat HNSW, plain IVF-PQ and fast-scan without the PCA for recall at a given
    time (benchmarks/README.md): fast-scan scores the codes of a third of the gallery in about 1.5 ms.
    """
    reduced = dim if dim < 8 else 3 * dim // 4 // 2 * 2
    subquantizers = reduced // 2 if reduced % 2 == 0 else reduced
    pca = f"PCAR{reduced}," if reduced < dim else ""
    return f"{pca}IVF{nlist},PQ{subquantizers}x4fs,RFlat"


def _set_fast_scan(ivf: Any, queries: int) -> None:
    """Pick the fast-scan implementation of an ivfpq IVF for a search of `queries` vectors (a run-time setting).

    One query: build its look-up tables once for all the lists it scans (1.5 against 1.8 ms at 1M faces); a batch:
    FAISS's own choice (59 against 85 ms for 64 queries).
    """
    if isinstance(ivf, _faiss.IndexIVFFastScan):  # older snapshots hold a plain IndexIVFPQ until compacted
        ivf.implem = 10 if queries == 1 else 0


def _trained_main(kind: IndexKind, tuning: Tuning, x: npt.NDArray[np.float32]) -> Any:
    """An empty structure of `kind` for len(x) vectors, trained on (a sample of at most 64 per IVF list of) x."""
    main = _new_main(kind, x.shape[1], tuning, len(x))
    cap = 64 * _nlist(len(x))
    sample = np.sort(np.random.default_rng(0).choice(len(x), cap, replace=False)) if len(x) > cap else slice(None)
    main.train(x[sample])
    return main


def _id_map(index: Any) -> npt.NDArray[np.int64]:
    return faiss.vector_to_array(index.id_map).astype(np.int64)


class _GpuCopy:
    """Device copy of the live vectors for search: positions are append-only and removals mask positions.

    Masked vectors stay on the device, so a search over-fetches by their number and filters them out; once they
    are many, `FaissIndex.needs_compaction` asks for a fresh index (and so a fresh copy).
    """

    def __init__(self, kind: IndexKind, dim: int, ids: npt.NDArray[np.int64], x: npt.NDArray[np.float32]) -> None:
        self._res: Any = faiss.StandardGpuResources()
        self._kind = kind
        self._index: Any = self._build(dim, x)
        self._pos_to_id = ids.copy()
        self._masked: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)

    def _build(self, dim: int, x: npt.NDArray[np.float32]) -> Any:
        if self._kind.name == "gpu_ivf":
            cpu = faiss.index_factory(dim, f"IVF{_nlist(len(x))},Flat", faiss.METRIC_INNER_PRODUCT)
            cpu.train(x)
            index = faiss.index_cpu_to_gpu(self._res, 0, cpu)
            index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
            return index
        config = faiss.GpuIndexFlatConfig()
        config.useFloat16 = True
        index = _faiss.GpuIndexFlatIP(self._res, dim, config)
        if len(x):
            index.add(x)
        return index

    @property
    def masked(self) -> int:
        """Positions holding removed vectors."""
        return int(self._masked.size)

    def add(self, ids: npt.NDArray[np.int64], x: npt.NDArray[np.float32]) -> None:
        start = self._pos_to_id.size
        if self._kind.name == "gpu_ivf":
            self._index.add_with_ids(x, np.arange(start, start + len(x), dtype=np.int64))
        else:
            self._index.add(x)
        self._pos_to_id = np.concatenate([self._pos_to_id, ids])

    def mask(self, ids: npt.NDArray[np.int64]) -> None:
        """Hide every position holding one of ``ids`` (an id removed, added and removed again has two)."""
        self._masked = np.union1d(self._masked, np.flatnonzero(np.isin(self._pos_to_id, ids)))

    def search(
        self, q: npt.NDArray[np.float32], k: int, tuning: Tuning
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None:
        """Results (ids -1 where none) of the k best live vectors, or None when the GPU cannot fetch that many."""
        fetch = min(k + self._masked.size, self._pos_to_id.size)
        if fetch > _GPU_MAX_K:
            return None
        if self._kind.name == "gpu_ivf":
            self._index.nprobe = auto_nprobe(tuning, int(self._index.nlist), gpu=True)
        scores, pos = self._index.search(q, fetch)
        s, p = _drop_ids(np.asarray(scores, dtype=np.float32), np.asarray(pos, dtype=np.int64), self._masked, k)
        return s, np.where(p >= 0, self._pos_to_id[np.maximum(p, 0)], -1)


def _drop_ids(
    scores: npt.NDArray[np.float32], ids: npt.NDArray[np.int64], dropped: npt.NDArray[np.int64], k: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The first k results of each row whose ids are not in `dropped` (sorted), padded with -inf / -1."""
    if dropped.size == 0:
        return scores[:, :k], ids[:, :k]
    out_s = np.full((ids.shape[0], k), -np.inf, dtype=np.float32)
    out_i = np.full((ids.shape[0], k), -1, dtype=np.int64)
    keep = (ids >= 0) & ~sorted_lookup(dropped, ids.ravel())[1].reshape(ids.shape)
    for row in range(ids.shape[0]):
        s, i = scores[row][keep[row]][:k], ids[row][keep[row]][:k]
        out_s[row, : s.size], out_i[row, : i.size] = s, i
    return out_s, out_i


def _merge(
    a: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]],
    b: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]],
    k: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Top k of two result sets (M, *) by score, empty slots (-1) last."""
    s = np.concatenate([a[0], b[0]], axis=1)
    i = np.concatenate([a[1], b[1]], axis=1)
    s = np.where(i < 0, np.float32(-np.inf), s)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


class FaissIndex:
    """`VectorIndex` of one kind (see `KINDS`), keyed by the caller's ids. Not thread-safe; callers serialise access.

    Parts: ``main`` (the kind's structure; None until a kind that trains has ``min_train`` vectors), ``staging``
    (exact; vectors waiting for training, and ids added again after a tombstone), ``tombstones`` (ids removed from
    main but still inside it) and, for GPU kinds, a device copy used for search.
    """

    def __init__(self, dim: int, *, kind: str = "flat", tuning: Tuning | None = None) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {sorted(KINDS)}")
        self._dim = dim
        self._kind = KINDS[kind]
        if self._kind.gpu and not gpu_available():
            raise RuntimeError(f"index kind {kind!r} needs a GPU, and this faiss build has no GPU support or sees none")
        self._tuning = tuning or Tuning()
        self._main: Any = None if self._kind.min_train else _new_main(self._kind, dim, self._tuning, 0)
        self._staging: Any = _exact(dim)
        self._tombstones: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        # Sorted live ids for O(log n) duplicate checks without a Python set.
        self._sorted_ids: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._gpu: _GpuCopy | None = None
        self._selector: tuple[Any, Any] | None = None  # (IDSelectorNot, the batch it wraps) over the tombstones
        self._ensure_gpu()

    # --- properties -------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Vector dimensionality."""
        return self._dim

    @property
    def kind(self) -> str:
        """The kind's name (a key of `KINDS`)."""
        return self._kind.name

    @property
    def tuning(self) -> Tuning:
        """Build and search parameters."""
        return self._tuning

    @property
    def ntotal(self) -> int:
        """Number of live vectors."""
        return int(self._sorted_ids.size)

    @property
    def uses_gpu(self) -> bool:
        """Whether searches go to a GPU copy."""
        return self._kind.gpu

    @property
    def nprobe(self) -> int | None:
        """Lists an ivfpq search scans now (`auto_nprobe`); None for other kinds or before training."""
        if self._kind.name != "ivfpq" or self._main is None:
            return None
        return auto_nprobe(self._tuning, int(self._main_ivf().nlist))

    def _main_ivf(self) -> Any:
        """The IVF structure inside main (IVF kinds, once trained), downcast."""
        return _faiss.downcast_index(faiss.extract_index_ivf(self._main))

    @property
    def staged(self) -> int:
        """Vectors in the exact staging index."""
        return int(self._staging.ntotal)

    @property
    def tombstones(self) -> int:
        """Removed vectors still inside the structure (or masked on the GPU)."""
        return int(self._tombstones.size) + (self._gpu.masked if self._gpu is not None else 0)

    @property
    def needs_compaction(self) -> bool:
        """Whether `compacted` would pay off: many tombstones, a large staging index, IVF lists trained for a
        gallery a quarter of today's size, or a pq or ivfpq structure of an older layout."""
        n = max(self.ntotal, 1)
        if self.tombstones > max(1000, n // 10):
            return True
        if self._main is not None and self.staged > max(10_000, n // 20):
            return True
        trained_for = self._tuning_trained_for()
        return (trained_for is not None and n > 4 * trained_for) or self._outdated_structure()

    def _outdated_structure(self) -> bool:
        """An ivfpq snapshot from before fast-scan (8-bit PQ codes, too slow for today's search effort), or a pq
        snapshot of vectors wider than `PQ_MAX_DIM` coded without the PCA (3-4x slower at 1M faces)."""
        if self._main is None:
            return False
        if self._kind.name == "ivfpq":
            return not isinstance(self._main_ivf(), _faiss.IndexIVFFastScan)
        if self._kind.name == "pq" and self._dim > PQ_MAX_DIM:
            refine: Any = faiss.downcast_index(self._main.index)
            return not isinstance(faiss.downcast_index(refine.base_index), faiss.IndexPreTransform)
        return False

    def _tuning_trained_for(self) -> int | None:
        if self._kind.name != "ivfpq" or self._main is None:
            return None
        nlist = int(self._main_ivf().nlist)
        return int((nlist / 4) ** 2)

    def set_search_tuning(self, tuning: Tuning) -> None:
        """Take the search-time parameters (ef_search, nprobe, rerank, k_factor) of `tuning`; the build-time ones
        stay those the structure was built with (a snapshot loaded under new settings searches by the settings)."""
        self._tuning = replace(tuning, hnsw_m=self._tuning.hnsw_m, ef_construction=self._tuning.ef_construction)

    # --- changes ----------------------------------------------------------------------------------

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
        # An id whose old vector is a tombstone inside main must not go there again: the filter is by id.
        staged = sorted_lookup(self._tombstones, ids_arr)[1] if self._main is not None else np.ones(ids_arr.size, bool)
        if staged.any():
            self._staging.add_with_ids(x_arr[staged], ids_arr[staged])
        if (~staged).any():
            self._main.add_with_ids(x_arr[~staged], ids_arr[~staged])
        if self._gpu is not None:
            self._gpu.add(ids_arr, x_arr)
        # O(N) insertion rather than a re-sort: a single enrolment into a 1M gallery costs a copy, not a sort.
        self._sorted_ids = np.insert(self._sorted_ids, np.searchsorted(self._sorted_ids, uniq), uniq)
        if self._main is None and self.staged >= self._kind.min_train:
            self._train_from_staging()
        self._ensure_gpu()

    def _train_from_staging(self) -> None:
        """Train main on the staged vectors and move them into it."""
        ids = _id_map(self._staging)
        x = self._staging_vectors(ids)
        main = _trained_main(self._kind, self._tuning, x)
        main.add_with_ids(x, ids)
        self._main = main
        # A new staging index, not reset(): FAISS keeps a reset index's buffer, as large as everything staged.
        self._staging = _exact(self._dim)

    def _ensure_gpu(self) -> None:
        """Start the device copy once the host structure exists and (for IVF) can be trained."""
        if self._kind.gpu and self._gpu is None and self._main is not None and self.ntotal >= self._kind.min_train:
            ids = self.ids()
            self._gpu = _GpuCopy(self._kind, self._dim, ids, self.reconstruct(ids))

    def _staging_vectors(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        if ids.size == 0:
            return np.empty((0, self._dim), dtype=np.float32)
        return np.asarray(self._staging.reconstruct_batch(ids), dtype=np.float32).reshape(-1, self._dim)

    def remove(self, ids: npt.ArrayLike) -> int:
        """Remove ids int64 (N,); returns the number removed (unknown ids ignored)."""
        wanted = np.unique(as_ids(ids, allow_negative=True))
        present = wanted[sorted_lookup(self._sorted_ids, wanted)[1]]  # no sort of the stored ids: O(n log N)
        if present.size == 0:
            return 0
        in_staging = sorted_lookup(np.sort(_id_map(self._staging)), present)[1]
        removed = int(self._staging.remove_ids(present[in_staging])) if in_staging.any() else 0
        in_main = present[~in_staging]
        if in_main.size:
            if self._kind.native_remove:
                removed += int(self._main.remove_ids(in_main))
            else:
                self._tombstones = np.union1d(self._tombstones, in_main)
                self._selector = None
                removed += int(in_main.size)
        if self._gpu is not None:
            self._gpu.mask(present)
        self._sorted_ids = np.delete(self._sorted_ids, np.searchsorted(self._sorted_ids, present))
        if removed != present.size:
            raise IndexCorruptError(f"faiss removed {removed} of {present.size} ids known to be present")
        return removed

    def reset(self) -> None:
        """Remove everything (a trained structure keeps its training)."""
        if self._main is not None:
            self._main.reset()
        self._staging = _exact(self._dim)
        self._tombstones = np.empty(0, dtype=np.int64)
        self._selector = None
        self._sorted_ids = np.empty(0, dtype=np.int64)
        self._gpu = None
        self._ensure_gpu()

    # --- search -----------------------------------------------------------------------------------

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
        exhaustive = self._kind.approximate and 2 * kk >= self.ntotal
        found = self._gpu.search(q, kk, self._tuning) if self._gpu is not None and not exhaustive else None
        if exhaustive:
            # Asked for most of the index (identity search widening its fetch): a graph or IVF walk may not
            # reach every vector, and scoring them all costs about as much as returning them.
            s, i = self._exhaustive(q, kk)
        elif found is not None:  # the device copy holds every live vector
            s, i = found
        else:
            s, i = self._search_main(q, kk)
            if self.staged:
                s, i = _merge((s, i), self._raw(self._staging, q, min(kk, self.staged)), kk)
        empty = i < 0
        scores[:, : s.shape[1]] = np.where(empty, np.float32(-np.inf), s)  # FAISS pads with -FLT_MAX
        out_ids[:, : i.shape[1]] = np.where(empty, -1, i)
        return scores, out_ids

    def _exhaustive(self, q: npt.NDArray[np.float32], k: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Exact top k over the stored (decoded) vectors."""
        ids = self.ids()
        scores = q @ self.reconstruct(ids).T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, axis=1).astype(np.float32), ids[top]

    def _search_main(self, q: npt.NDArray[np.float32], k: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        if self._main is None or self._main.ntotal == 0:
            return np.empty((q.shape[0], 0), np.float32), np.empty((q.shape[0], 0), np.int64)
        if self._tombstones.size and self._kind.selector:
            params = self._search_params(k)
            if self._selector is None:
                batch = faiss.IDSelectorBatch(self._tombstones)
                self._selector = (faiss.IDSelectorNot(batch), batch)
            params.sel = self._selector[0]
            return self._raw(self._main, q, k, params)
        fetch = min(k + int(self._tombstones.size), int(self._main.ntotal))
        s, i = self._raw(self._main, q, fetch, self._search_params(fetch, queries=q.shape[0]))
        return _drop_ids(s, i, self._tombstones, k)

    def _search_params(self, k: int, *, queries: int = 1) -> Any:
        """FAISS search parameters for fetching k results from main for `queries` vectors (ivfpq: also picks the
        fast-scan kernel for that many; pq keeps FAISS's own choice, the fastest for one query and for batches)."""
        if self._kind.name == "hnsw":
            return _faiss.SearchParametersHNSW(efSearch=max(self._tuning.ef_search, k))
        if self._kind.name in ("pq", "ivfpq"):
            refine: Any = faiss.IndexRefineSearchParameters()
            # A fixed short list, not a multiple of k: recall@1 needs the true best among the candidates whatever
            # k is; tombstoned candidates widen it.
            candidates = self._tuning.rerank * _rerank_factor(self._kind, self._dim) + int(self._tombstones.size)
            refine.k_factor = float(max(self._tuning.k_factor, candidates / k))
            if self._kind.name == "pq":
                return refine
            structure = self._main_ivf()
            _set_fast_scan(structure, queries)
            ivf = faiss.SearchParametersIVF()
            ivf.nprobe = auto_nprobe(self._tuning, int(structure.nlist))
            refine.base_index_params = ivf
            refine.keep_alive = ivf  # the C++ side only points at it
            return refine
        return None

    @staticmethod
    def _raw(index: Any, q: npt.NDArray[np.float32], k: int, params: Any = None) -> tuple[Any, Any]:
        s, i = index.search(q, k, params=params) if params is not None else index.search(q, k)
        return np.asarray(s, dtype=np.float32), np.asarray(i, dtype=np.int64)

    # --- contents ---------------------------------------------------------------------------------

    def ids(self) -> npt.NDArray[np.int64]:
        """All live ids, int64 (ntotal,), ascending (a copy)."""
        return self._sorted_ids.copy()

    def reconstruct(self, ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Stored vectors float32 (N, dim) for ids int64 (N,) (decoded, for quantised kinds); KeyError if absent."""
        ids_arr = as_ids(ids, allow_negative=True)
        _, found = sorted_lookup(self._sorted_ids, ids_arr)
        if not found.all():
            raise KeyError(f"ids not in index: {ids_arr[~found][:10].tolist()}")
        out = np.empty((ids_arr.size, self._dim), dtype=np.float32)
        if ids_arr.size == 0:
            return out
        staged = sorted_lookup(np.sort(_id_map(self._staging)), ids_arr)[1]
        if staged.any():
            out[staged] = self._staging_vectors(ids_arr[staged])
        if (~staged).any():
            out[~staged] = np.asarray(self._main.reconstruct_batch(ids_arr[~staged])).reshape(-1, self._dim)
        return out

    def compacted(self, *, kind: str | None = None, tuning: Tuning | None = None) -> FaissIndex:
        """A new index of the live vectors, without tombstones or staging, of `kind` (default: this one's).

        Costs a full build; callers run it off the serving path and replay changes made meanwhile.
        """
        ids = self.ids()
        return FaissIndex.from_vectors(
            ids, self.reconstruct(ids), dim=self._dim, kind=kind or self._kind.name, tuning=tuning or self._tuning
        )

    @classmethod
    def from_vectors(
        cls,
        ids: npt.ArrayLike,
        x: npt.ArrayLike,
        *,
        dim: int | None = None,
        kind: str = "flat",
        tuning: Tuning | None = None,
    ) -> FaissIndex:
        """An index of `kind` holding ids int64 (N,) with vectors float32 (N, dim), trained on a sample of them."""
        x_arr = np.asarray(x)
        out = cls(dim if dim is not None else int(x_arr.shape[1]), kind=kind, tuning=tuning)
        ids_arr = as_ids(ids)
        x_arr = as_vectors(x_arr, out._dim)
        min_train = out._kind.min_train
        if min_train and ids_arr.size >= min_train and out._main is None:
            out._main = _trained_main(out._kind, out._tuning, x_arr)
        out.add(ids_arr, x_arr)
        return out

    # --- persistence ------------------------------------------------------------------------------

    def serialize(self) -> npt.NDArray[np.uint8]:
        """kind, tuning, main and staging (`faiss.write_index` format) and tombstones in one `.npz`, uint8 (nbytes,)."""
        parts: dict[str, npt.NDArray[Any]] = {
            "kind": np.frombuffer(self._kind.name.encode(), dtype=np.uint8),
            "tuning": np.frombuffer(json.dumps(asdict(self._tuning)).encode(), dtype=np.uint8),
            "main": _serialize(self._main) if self._main is not None else np.empty(0, np.uint8),
            "staging": _serialize(self._staging),
            "tombstones": self._tombstones,
        }
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **parts)
        return np.frombuffer(buf.getbuffer(), dtype=np.uint8).copy()

    @classmethod
    def deserialize(cls, data: bytes | npt.NDArray[np.uint8], *, kind: str | None = None) -> FaissIndex:
        """Inverse of `serialize`; IndexCorruptError if unreadable or inconsistent. ``kind``, if given, must match."""
        raw = bytes(data) if not isinstance(data, bytes) else data
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                parts = {name: npz[name] for name in ("kind", "tuning", "main", "staging", "tombstones")}
            stored_kind = parts["kind"].tobytes().decode()
            tuning = Tuning(**json.loads(parts["tuning"].tobytes().decode()))
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise IndexCorruptError(f"unreadable index file: {exc}") from exc
        if stored_kind not in KINDS or (kind is not None and stored_kind != kind):
            raise IndexCorruptError(f"index kind {stored_kind!r} is not the expected {kind!r}")
        staging = _deserialize(parts["staging"], faiss.IndexIDMap2)
        main = _deserialize(parts["main"], faiss.IndexIDMap2) if parts["main"].size else None
        tomb = np.asarray(parts["tombstones"])
        if tomb.dtype != np.int64 or tomb.ndim != 1 or not np.array_equal(tomb, np.unique(tomb)):
            raise IndexCorruptError("tombstones must be sorted unique int64")
        dim = int(staging.d)
        kind_spec = KINDS[stored_kind]
        if main is not None and (
            int(main.d) != dim
            or _inner_type(main) is not _inner_type(_new_main(kind_spec, dim, replace(Tuning(), hnsw_m=4), 0))
        ):
            raise IndexCorruptError(f"index structure does not match kind {stored_kind!r}")
        if main is None and not kind_spec.min_train:
            raise IndexCorruptError(f"kind {stored_kind!r} needs its structure")
        main_ids = _id_map(main) if main is not None else np.empty(0, np.int64)
        staged_ids = _id_map(staging)
        live_main = np.setdiff1d(main_ids, tomb)
        if (
            np.unique(main_ids).size != main_ids.size
            or not np.isin(tomb, main_ids).all()
            or np.unique(staged_ids).size != staged_ids.size
            or np.intersect1d(live_main, staged_ids).size
        ):
            raise IndexCorruptError("faiss index ids are inconsistent (duplicates or stray tombstones)")
        live = np.union1d(live_main, staged_ids)
        if live.size and live[0] < 0:
            raise IndexCorruptError("negative id in index")
        if kind_spec.gpu and not gpu_available():
            raise IndexCorruptError(f"the snapshot is of GPU kind {stored_kind!r} and no GPU is available")
        out = cls(dim, kind=stored_kind, tuning=tuning)
        out._main, out._staging, out._tombstones, out._sorted_ids = main, staging, tomb, live
        out._gpu = None
        out._ensure_gpu()
        return out

    def save(self, path: Path) -> str:
        """Atomically write the index to `path`; returns the sha256 hex of the bytes written."""
        return atomic_write_bytes(path, self.serialize().data)

    @classmethod
    def load(cls, path: Path, *, expected_sha256: str | None = None, kind: str | None = None) -> FaissIndex:
        """Read an index written by `save`; IndexCorruptError on I/O error, checksum mismatch or bad contents."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise IndexCorruptError(f"cannot read {path}: {exc}") from exc
        if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
            raise IndexCorruptError(f"sha256 mismatch for {path}")
        return cls.deserialize(data, kind=kind)


def _inner_type(index: Any) -> type:
    """The concrete type of the structure inside an IndexIDMap2."""
    return type(faiss.downcast_index(index.index))


def _serialize(index: Any) -> npt.NDArray[np.uint8]:
    return np.asarray(faiss.serialize_index(index), dtype=np.uint8)


def _deserialize(buf: npt.NDArray[np.uint8], expected: type[Any]) -> Any:
    """A FAISS index from its bytes, downcast and owned; IndexCorruptError if unreadable or not ``expected``."""
    try:
        raw: Any = faiss.deserialize_index(np.ascontiguousarray(buf, dtype=np.uint8))
    except (RuntimeError, MemoryError) as exc:  # truncated/garbage data, absurd sizes
        raise IndexCorruptError(f"unreadable faiss index: {exc}") from exc
    index: Any = faiss.downcast_index(raw)
    # downcast_index returns a non-owning proxy; move ownership so the index outlives `raw`.
    raw.this.disown()
    index.this.acquire()
    if not isinstance(index, expected):
        raise IndexCorruptError(f"expected {expected.__name__}, got {type(index).__name__}")
    inner = faiss.downcast_index(index.index)
    if inner.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexCorruptError("expected an inner-product index")
    if int(index.ntotal) != _id_map(index).size:
        raise IndexCorruptError("faiss index id map and vector count differ")
    return index


def set_search_threads(n: int) -> None:
    """Set FAISS's OpenMP thread count for this process (n >= 1).

    A server answering many single-query searches at once gets its parallelism from concurrent requests;
    more OpenMP threads than free cores then only adds spin-waiting, so 1 is the serving default.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    faiss.omp_set_num_threads(n)
