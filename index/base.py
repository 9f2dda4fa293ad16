"""The vector-index interface, its error type, and helpers shared by the backends.

Conventions for every `VectorIndex`: ids are int64 and must be >= 0 (-1 is the empty-slot
sentinel in search results); vectors are float32 of shape (N, dim); scores are inner products.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "IndexCorruptError",
    "VectorIndex",
    "as_ids",
    "as_vectors",
    "atomic_write_bytes",
    "check_k",
    "check_parts",
    "sorted_lookup",
    "unit_means",
]


class IndexCorruptError(Exception):
    """A persisted index is missing, unreadable, fails its checksum, or is internally inconsistent."""


class VectorIndex(Protocol):
    """Exact inner-product index keyed by caller-chosen int64 ids. Not thread-safe on its own."""

    @property
    def dim(self) -> int:
        """Vector dimensionality."""
        ...

    @property
    def ntotal(self) -> int:
        """Number of stored vectors."""
        ...

    def add(self, ids: npt.ArrayLike, x: npt.ArrayLike) -> None:
        """Add ids int64 (N,) >= 0 with vectors float32 (N, dim) (other real dtypes are converted).

        Raises ValueError, leaving the index unchanged, on a bad shape/dtype, a non-finite value,
        a negative id, or an id already present or repeated within the call.
        """
        ...

    def remove(self, ids: npt.ArrayLike) -> int:
        """Remove ids int64 (N,); returns how many were present and removed (unknown ids ignored)."""
        ...

    def search(self, xq: npt.ArrayLike, k: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Top-k by inner product for queries float32 (M, dim).

        Returns scores float32 (M, k) sorted descending and ids int64 (M, k); slots beyond ntotal
        hold id -1 and score -inf. Order among exactly tied scores is unspecified. k < 1 raises
        ValueError.
        """
        ...

    def ids(self) -> npt.NDArray[np.int64]:
        """All stored ids, int64 (ntotal,), in unspecified order (a copy)."""
        ...

    def reconstruct(self, ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Stored vectors float32 (N, dim) for ids int64 (N,); KeyError if any id is absent."""
        ...

    def reset(self) -> None:
        """Remove everything."""
        ...


def as_ids(ids: npt.ArrayLike, *, name: str = "ids", allow_negative: bool = False) -> npt.NDArray[np.int64]:
    """Validate and convert to a contiguous int64 (N,) array; ValueError on bad dtype/shape/values."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")
    if arr.dtype.kind == "u" and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} do not fit in int64")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    if not allow_negative and int(out.min()) < 0:
        raise ValueError(f"{name} must be >= 0 (-1 is the empty-slot sentinel)")
    return out


def as_vectors(x: npt.ArrayLike, dim: int, *, name: str = "x") -> npt.NDArray[np.float32]:
    """Validate and convert to a C-contiguous float32 (N, dim) array; ValueError on bad input."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}), got {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must have a real numeric dtype, got {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains non-finite values (or values out of float32 range)")
    return out


def check_k(k: int) -> int:
    """Return k as an int if k >= 1, else raise ValueError."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def sorted_lookup(
    sorted_keys: npt.NDArray[np.int64], keys: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """Positions of `keys` (N,) in ascending `sorted_keys` and a bool (N,) mask of which were found.

    Positions where found is False are clipped into range and must not be used.
    """
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, dtype=np.intp), np.zeros(keys.shape, dtype=np.bool_)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return pos, sorted_keys[pos] == keys


def atomic_write_bytes(path: Path, data: bytes | bytearray | memoryview) -> str:
    """Atomically replace `path` with `data` (tmp file in the same dir, fsync, os.replace).

    Returns the sha256 hex digest of `data`. On failure the tmp file is removed and `path` is
    left as it was.
    """
    digest = hashlib.sha256(data).hexdigest()
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    replaced = False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        replaced = True
    finally:
        if not replaced:
            tmp.unlink(missing_ok=True)
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return digest


def check_parts(parts: Sequence[int] | None, dim: int) -> tuple[int, ...] | None:
    """``parts`` as a tuple after checking that they are positive and sum to ``dim`` (None stays None)."""
    if parts is None:
        return None
    out = tuple(int(p) for p in parts)
    if not out or min(out) < 1 or sum(out) != dim:
        raise ValueError(f"parts {out} must be positive dims that sum to the vector dim {dim}")
    return out


def unit_means(
    sums: npt.NDArray[np.float64], parts: Sequence[int] | None, *, dtype: type[np.floating[Any]] = np.float32
) -> npt.NDArray[Any]:
    """Identity means from sums of their faces, float (N, D) -> (N, D) unit rows of ``dtype`` (float32).

    With ``parts`` (dims summing to D: a fusion's vector is k independently normalised parts scaled by
    1/sqrt(k)) each part is normalised on its own and the row scaled by 1/sqrt(k), so that a mean is a fusion
    vector too and its cosine stays the mean of the k models' cosines. Normalising the whole sum instead would
    weight the model whose faces agree most closely (the one with the largest part norm) above the others.
    """
    if parts is None:
        unit: npt.NDArray[Any] = (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(dtype)
        return unit
    out = np.empty(sums.shape, dtype=np.float64)
    start = 0
    for width in parts:
        block = sums[:, start : start + width]
        out[:, start : start + width] = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        start += width
    fused: npt.NDArray[Any] = (out / np.sqrt(len(parts))).astype(dtype)
    return fused
