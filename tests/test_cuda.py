"""The GPU path on a real device: the embedder on CUDA, the GPU FAISS kinds against exact search, and a re-index
served from the GPU. Each test skips, saying why, on a machine without one; `scripts/gpu_check.sh` runs them on a
GPU machine and records the results."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from embedding.embedder import dlib_resnet_model_path, load_embedder
from index import FaissIndex, gpu_available
from service.settings import Settings
from tests.test_index_kinds import check_kind
from tests.test_reindex import enroll_people, model_b, ranking, reindex, start

pytestmark = pytest.mark.cuda
__all__ = ["model_b"]  # the fixture, shared with test_reindex


def needs_cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here; scripts/gpu_check.sh runs these on a GPU machine")


def needs_gpu_faiss() -> None:
    if not gpu_available():
        pytest.skip("this faiss build has no GPU support or sees no GPU; scripts/gpu_check.sh installs faiss-gpu")


def test_embedder_on_cuda_matches_cpu() -> None:
    needs_cuda()
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (150, 150, 3), dtype=np.uint8) for _ in range(8)]
    on_gpu = load_embedder(dlib_resnet_model_path(), device="cuda", runtime="torch").embed(crops)
    on_cpu = load_embedder(dlib_resnet_model_path(), device="cpu", runtime="torch").embed(crops)
    assert on_gpu.shape == on_cpu.shape and on_gpu.dtype == np.float32
    assert (np.einsum("nd,nd->n", on_gpu, on_cpu) > 0.999).all()


@pytest.mark.parametrize("kind", ["gpu_flat", "gpu_ivf"])
def test_gpu_kinds_against_exact_search(kind: str) -> None:
    needs_gpu_faiss()
    index = check_kind(kind, 12_000 if kind == "gpu_ivf" else 3000, seed=11)
    assert index.uses_gpu and index.tombstones > 0  # removals masked on the device, no rebuild


def test_gpu_snapshot_round_trip(tmp_path: Path) -> None:
    needs_gpu_faiss()
    index = check_kind("gpu_flat", 2000, seed=12)
    loaded = FaissIndex.load(tmp_path / "i.npz", expected_sha256=index.save(tmp_path / "i.npz"))
    xq = np.random.default_rng(13).standard_normal((5, index.dim)).astype(np.float32)
    np.testing.assert_array_equal(index.search(xq, 5)[1], loaded.search(xq, 5)[1])


def test_reindex_served_from_the_gpu(make_settings: Callable[..., Settings], model_b: Path) -> None:
    needs_cuda()
    needs_gpu_faiss()
    settings = make_settings(model_path=dlib_resnet_model_path(), device="cuda", runtime="torch")
    rt = start(settings)
    try:
        enroll_people(rt, 6)
        assert rt.service.indexes.kinds() == {1: "gpu_flat"}
        job = reindex(settings, model_b)
        assert (job.status, job.failed) == ("completed", 0)
        rt.service.sync()
        assert rt.service.active.label.startswith("test-model-b@")
        assert rt.service.indexes.kinds() == {1: "gpu_flat"}
        assert ranking(rt, 2001)[0][0] == "p2"  # the probe is p2's second photo, re-embedded on the GPU
    finally:
        rt.close()
