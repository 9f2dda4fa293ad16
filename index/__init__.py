"""Vector indexes for face search: a small `VectorIndex` interface, numpy and FAISS backends,
and identity-level search with persistence (`GalleryIndex`)."""

from index.base import IndexCorruptError, VectorIndex
from index.brute_force import BruteForceIndex
from index.faiss_index import KINDS, FaissIndex, IndexKind, Tuning, auto_nprobe, gpu_available, set_search_threads
from index.gallery import GalleryIndex, Hit

__all__ = [
    "KINDS",
    "BruteForceIndex",
    "FaissIndex",
    "GalleryIndex",
    "Hit",
    "IndexCorruptError",
    "IndexKind",
    "Tuning",
    "VectorIndex",
    "auto_nprobe",
    "gpu_available",
    "set_search_threads",
]
