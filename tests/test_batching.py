"""Micro-batching: results come back to the right caller, batches form, a full queue answers 429."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batching import MicroBatcher
from service.errors import OverloadedError


def test_results_go_to_their_callers_and_batches_form() -> None:
    sizes: list[int] = []

    def fn(images: Sequence[np.ndarray]) -> np.ndarray:
        sizes.append(len(images))
        return np.stack([img.reshape(-1)[:2].astype(np.float32) for img in images])

    batcher = MicroBatcher(max_batch=16, max_wait_s=0.05, max_queue=1000)
    try:

        def call(i: int) -> np.ndarray:
            return batcher.embed(fn, [np.full((2, 2, 3), i, dtype=np.uint8), np.full((2, 2, 3), i + 1, dtype=np.uint8)])

        with ThreadPoolExecutor(max_workers=8) as pool:
            outs = list(pool.map(call, range(0, 80, 2)))
    finally:
        batcher.close()
    for i, out in zip(range(0, 80, 2), outs, strict=True):
        assert out.tolist() == [[i, i], [i + 1, i + 1]]
    assert sum(sizes) == 80
    assert max(sizes) <= 16
    assert max(sizes) > 2, "concurrent requests were batched together"


def test_full_queue_is_refused() -> None:
    release = threading.Event()

    def slow(images: Sequence[np.ndarray]) -> np.ndarray:
        release.wait(5)
        return np.zeros((len(images), 1), dtype=np.float32)

    batcher = MicroBatcher(max_batch=1, max_wait_s=0, max_queue=3)
    img = np.zeros((1, 1, 3), dtype=np.uint8)
    try:
        first = batcher.submit(slow, [img])
        while batcher.queued:  # until the worker has taken it and blocks
            time.sleep(0.001)
        queued = [batcher.submit(slow, [img]) for _ in range(3)]
        with pytest.raises(OverloadedError) as exc:
            batcher.submit(slow, [img])
        assert (exc.value.status, exc.value.code) == (429, "overloaded")
    finally:
        release.set()
        batcher.close()
    assert all(f.result().shape == (1, 1) for f in [first, *queued])


def test_errors_reach_the_caller() -> None:
    def broken(images: Sequence[np.ndarray]) -> np.ndarray:
        raise RuntimeError("boom")

    batcher = MicroBatcher(max_batch=4, max_wait_s=0, max_queue=10)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.embed(broken, [np.zeros((1, 1, 3), dtype=np.uint8)])
    finally:
        batcher.close()


def test_batches_never_mix_models() -> None:
    calls: list[tuple[str, int]] = []

    def model(name: str) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
        def fn(images: Sequence[np.ndarray]) -> np.ndarray:
            calls.append((name, len(images)))
            return np.full((len(images), 1), ord(name), dtype=np.float32)

        return fn

    a, b = model("a"), model("b")
    batcher = MicroBatcher(max_batch=64, max_wait_s=0.05, max_queue=1000)
    img = np.zeros((1, 1, 3), dtype=np.uint8)
    try:
        futures = [batcher.submit(a if i % 2 else b, [img, img]) for i in range(20)]
        outs = [f.result() for f in futures]
    finally:
        batcher.close()
    for i, out in enumerate(outs):
        assert out.ravel().tolist() == [ord("a" if i % 2 else "b")] * 2
    assert sum(n for _, n in calls) == 40
    assert len(calls) < 20, "same-model jobs were batched together"
