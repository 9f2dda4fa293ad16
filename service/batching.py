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
    fn: EmbedFn
    images: Sequence[np.ndarray]
    future: Future[np.ndarray] = field(default_factory=Future)


class MicroBatcher:
    """Gathers images from concurrent requests into batches for one worker thread.

    ``embed(fn, images)`` blocks the calling thread (never the event loop) until its rows are ready; only jobs
    with the same ``fn`` (the same model) share a batch, so a model switch never mixes models in one call.
    When more than ``max_queue`` images wait, new work is refused with :class:`OverloadedError` (HTTP 429)
    rather than queueing without bound; a single request larger than the queue is still accepted when the
    queue is empty.
    """

    def __init__(self, *, max_batch: int, max_wait_s: float, max_queue: int) -> None:
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

    def embed(self, fn: EmbedFn, images: Sequence[np.ndarray]) -> np.ndarray:
        """float32 (N, D) embeddings of ``images`` by ``fn``, in order."""
        return self.submit(fn, images).result()

    def submit(self, fn: EmbedFn, images: Sequence[np.ndarray]) -> Future[np.ndarray]:
        """Queue images for ``fn``; the future resolves to float32 (N, D)."""
        job = _Job(fn, list(images))
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
            batch = [self._jobs.popleft()]
            n = len(batch[0].images)
            # Later jobs of the same model join while they fit; others keep their place in the queue.
            for job in list(self._jobs):
                if job.fn == batch[0].fn and n + len(job.images) <= self._max_batch:
                    self._jobs.remove(job)
                    batch.append(job)
                    n += len(job.images)
            self._queued -= n
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            images = [img for job in batch for img in job.images]
            try:
                out = batch[0].fn(images)
            except Exception as exc:  # handed to every waiting caller, not swallowed
                log.exception("embedding a batch of %d images failed", len(images))
                for job in batch:
                    job.future.set_exception(exc)
                continue
            start = 0
            for job in batch:
                job.future.set_result(out[start : start + len(job.images)])
                start += len(job.images)
