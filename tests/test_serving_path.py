"""The serving path: no training code in `facedb serve`, no torch behind onnxruntime, the fastest runtime by default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from embedding.embedder import dlib_resnet_model_path, load_embedder
from embedding.errors import ModelLoadError
from embedding.facepath import aligned_face, build_detector
from embedding.onnx_embedder import ExportedOnnxEmbedder
from embedding.torch_embedder import TorchEmbedder
from tests.conftest import DATA_ROOT, REPO, read_rgb, require_data

SERVE_IMPORTS = """
import sys
from pathlib import Path
from service.cli import build_app
build_app(["serve"])
from service.api import create_app
from service.db import migrate
from service.db.engine import Database
from service.runtime import build_runtime
from service.settings import Settings
settings = Settings(_env_file=None, data_dir=Path(sys.argv[1]), onnx_cache_dir=Path(sys.argv[2]))
settings.data_dir.mkdir(parents=True, exist_ok=True)
db = Database(settings.resolved_database_url)
migrate.upgrade(db.engine)
db.dispose()
create_app(settings)
runtime = build_runtime(settings)
print(type(runtime.service.configured).__name__)
runtime.close()
print(",".join(sorted(m for m in sys.modules if m.startswith("embedding.train") or m.split(".")[0] == "torch")))
"""


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's ONNX export, made once for this module."""
    cache = tmp_path_factory.mktemp("onnx")
    ExportedOnnxEmbedder(dlib_resnet_model_path(), cache_dir=cache).load()
    return cache


def test_serve_imports_no_training_code_and_no_torch(tmp_path: Path, onnx_cache: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SERVE_IMPORTS, str(tmp_path / "data"), str(onnx_cache)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    embedder, loaded = proc.stdout.splitlines()[-2:]
    assert embedder == "OnnxEmbedder"  # the default model is an .onnx file
    assert loaded == "", f"the serving process imported {loaded}"


def test_auto_runtime_is_onnx_on_cpu_and_torch_elsewhere(tmp_path: Path) -> None:
    path = dlib_resnet_model_path()
    assert isinstance(load_embedder(path, runtime="auto", onnx_cache=tmp_path, device="cpu"), ExportedOnnxEmbedder)
    assert isinstance(load_embedder(path, runtime="auto", onnx_cache=tmp_path, device="cuda"), TorchEmbedder)
    assert isinstance(load_embedder(path, runtime="torch", onnx_cache=tmp_path), TorchEmbedder)
    assert isinstance(load_embedder(path, runtime="auto", onnx_cache=None, device="cpu"), TorchEmbedder)


@pytest.mark.data
def test_onnx_serves_the_same_model(onnx_cache: Path) -> None:
    """Same card, version and checksum as the .pt; every real face within cosine 0.999 of PyTorch."""
    torch_embedder = TorchEmbedder(dlib_resnet_model_path())
    onnx_embedder = ExportedOnnxEmbedder(dlib_resnet_model_path(), cache_dir=onnx_cache)
    assert onnx_embedder.checksum == torch_embedder.checksum
    assert onnx_embedder.card == torch_embedder.card
    detector = build_detector()
    photos = sorted(require_data(DATA_ROOT / "lfw" / "images").glob("*/*.jpg"))[:200:20]
    crops = []
    for path in photos:
        image = read_rgb(path)
        crops.append(aligned_face(image, detector.detect(image)[0]).for_model(torch_embedder.card.input))
    cosine = (torch_embedder.embed(crops) * onnx_embedder.embed(crops)).sum(axis=1)
    assert cosine.min() >= 0.999, cosine
    assert len(list(onnx_cache.glob("*.onnx"))) == 1


def test_a_broken_export_is_not_kept(tmp_path: Path) -> None:
    """A .pt that cannot be exported leaves no file behind (a later start tries again)."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    cache = tmp_path / "cache"
    with pytest.raises(Exception, match=r"bad\.pt"):
        ExportedOnnxEmbedder(bad, cache_dir=cache).load()
    assert not cache.exists() or not list(cache.iterdir())


def test_an_unwritable_cache_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelLoadError, match="FACEDB_ONNX_CACHE_DIR"):
        ExportedOnnxEmbedder(dlib_resnet_model_path(), cache_dir=blocker / "onnx").load()
