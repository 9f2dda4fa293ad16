"""Exact inner-product search in plain numpy: the reference implementation of `VectorIndex`."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from index.base import as_ids, as_vectors, check_k, sorted_lookup

__all__ = ["BruteForceIndex"]


class BruteForceIndex:
    """Numpy `VectorIndex`: rows of a float32 (ntotal, dim) matrix with a parallel int64 id array.

    Each add/remove copies the storage (O(ntotal)); meant for tests and small galleries.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self._dim = dim
        self._ids: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._x: npt.NDArray[np.float32] = np.empty((0, dim), dtype=np.float32)

    @property
    def dim(self) -> int:
        """Vector dimensionality."""
        return self._dim

    @property
    def ntotal(self) -> int:
        """Number of stored vectors."""
        return int(self._ids.shape[0])

    def add(self, ids: npt.ArrayLike, x: npt.ArrayLike) -> None:
        """Add ids int64 (N,) >= 0 with vectors float32 (N, dim); ValueError (no change) on bad input."""
        ids_arr = as_ids(ids)
        x_arr = as_vectors(x, self._dim)
        if x_arr.shape[0] != ids_arr.shape[0]:
            raise ValueError(f"got {ids_arr.shape[0]} ids for {x_arr.shape[0]} vectors")
        if ids_arr.size == 0:
            return
        if np.unique(ids_arr).size != ids_arr.size:
            raise ValueError("ids repeated within one add() call")
        dup = ids_arr[np.isin(ids_arr, self._ids)]
        if dup.size:
            raise ValueError(f"ids already present: {dup[:10].tolist()}")
        self._ids = np.concatenate([self._ids, ids_arr])
        self._x = np.concatenate([self._x, x_arr])

    def remove(self, ids: npt.ArrayLike) -> int:
        """Remove ids int64 (N,); returns the number removed (unknown ids ignored)."""
        ids_arr = as_ids(ids, allow_negative=True)
        hit = np.isin(self._ids, ids_arr)
        n = int(hit.sum())
        if n:
            self._ids = self._ids[~hit]
            self._x = self._x[~hit]
        return n

    def search(self, xq: npt.ArrayLike, k: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Top-k for xq float32 (M, dim): scores float32 (M, k) descending, ids int64 (M, k); -1/-inf pads."""
        k = check_k(k)
        q = as_vectors(xq, self._dim, name="xq")
        m, n = q.shape[0], self.ntotal
        scores = np.full((m, k), -np.inf, dtype=np.float32)
        out_ids = np.full((m, k), -1, dtype=np.int64)
        kk = min(k, n)
        if kk == 0 or m == 0:
            return scores, out_ids
        all_scores = q @ self._x.T  # (M, n)
        if kk < n:
            cand = np.argpartition(-all_scores, kk - 1, axis=1)[:, :kk]
        else:
            cand = np.broadcast_to(np.arange(n), (m, n))
        cand_scores = np.take_along_axis(all_scores, cand, axis=1)
        order = np.argsort(-cand_scores, axis=1, kind="stable")
        top = np.take_along_axis(cand, order, axis=1)
        scores[:, :kk] = np.take_along_axis(cand_scores, order, axis=1)
        out_ids[:, :kk] = self._ids[top]
        return scores, out_ids

    def ids(self) -> npt.NDArray[np.int64]:
        """All stored ids, int64 (ntotal,), in insertion order (a copy)."""
        return self._ids.copy()

    def reconstruct(self, ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Stored vectors float32 (N, dim) for ids int64 (N,); KeyError if any id is absent."""
        ids_arr = as_ids(ids, allow_negative=True)
        order = np.argsort(self._ids, kind="stable")
        pos, found = sorted_lookup(self._ids[order], ids_arr)
        if not found.all():
            raise KeyError(f"ids not in index: {ids_arr[~found][:10].tolist()}")
        return self._x[order[pos]]

    def reset(self) -> None:
        """Remove everything."""
        self._ids = np.empty(0, dtype=np.int64)
        self._x = np.empty((0, self._dim), dtype=np.float32)
