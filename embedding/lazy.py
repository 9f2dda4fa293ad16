"""Lazy, idempotent, thread-safe model loading, written once for every embedder and detector."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

State = TypeVar("State")


class LazyModel(Generic[State]):
    """Owns ``load()``: the first call runs ``_load()`` once under a lock; later calls return at once.

    Subclasses implement ``_load() -> State`` (read files, build sessions) and use ``self._state()`` to get
    what it returned, loading on first use. Nothing is read at construction or import time.
    """

    def __init__(self) -> None:
        self._load_lock = threading.Lock()
        self._loaded_state: State | None = None

    def _load(self) -> State:
        raise NotImplementedError

    @property
    def is_loaded(self) -> bool:
        """True once ``load()`` has succeeded."""
        return self._loaded_state is not None

    def load(self) -> None:
        """Load the model if not loaded yet; idempotent and thread-safe. A failed load is retried next time."""
        if self._loaded_state is not None:
            return
        with self._load_lock:
            if self._loaded_state is None:
                self._loaded_state = self._load()  # published last: readers test it without the lock

    def _state(self) -> State:
        """What ``_load()`` returned, loading first if needed."""
        self.load()
        state = self._loaded_state
        if state is None:
            raise RuntimeError(f"{type(self).__name__} failed to load")
        return state
