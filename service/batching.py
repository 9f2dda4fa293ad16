"""Micro-batching in front of the embedder, with a bounded queue for back-pressure."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from service.errors import OverloadedError

log = logging.getLogger(__name__)

EmbedFn = Callable[[Sequence[np.ndarray]], np.ndarray]


@dataclass
class _Job:
    images: Sequence[np.ndarray]
    future: Future[np.ndarray] = field(default_factory=Future)


class MicroBatcher:
    """Gathers images from concurrent requests into batches for one worker thread.

    ``embed(images)`` blocks the calling thread (never the event loop) until its rows are ready. When more
    than ``max_queue`` images wait, new work is refused with :class:`OverloadedError` (HTTP 429) rather than
    queueing without bound; a single request larger than the queue is still accepted when the queue is empty.
    """

    def __init__(self, fn: EmbedFn, *, max_batch: int, max_wait_s: float, max_queue: int) -> None:
        self._fn = fn
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="facedb-embedder", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Images waiting to be embedded."""
        return self._queued

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """float32 (N, D) embeddings of ``images``, in order."""
        return self.submit(images).result()

    def submit(self, images: Sequence[np.ndarray]) -> Future[np.ndarray]:
        """Queue images; the future resolves to float32 (N, D)."""
        job = _Job(list(images))
        with self._cond:
            if self._closed:
                raise RuntimeError("the embedder has been shut down")
            if self._queued and self._queued + len(job.images) > self._max_queue:
                raise OverloadedError()
            self._jobs.append(job)
            self._queued += len(job.images)
            self._cond.notify()
        return job.future

    def close(self) -> None:
        """Finish queued work, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _take_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            deadline = time.monotonic() + self._max_wait_s
            while self._queued < self._max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Job] = []
            n = 0
            while self._jobs and (not batch or n + len(self._jobs[0].images) <= self._max_batch):
                job = self._jobs.popleft()
                batch.append(job)
                n += len(job.images)
            self._queued -= n
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            images = [img for job in batch for img in job.images]
            try:
                out = self._fn(images)
            except Exception as exc:  # handed to every waiting caller, not swallowed
                log.exception("embedding a batch of %d images failed", len(images))
                for job in batch:
                    job.future.set_exception(exc)
                continue
            start = 0
            for job in batch:
                job.future.set_result(out[start : start + len(job.images)])
                start += len(job.images)
