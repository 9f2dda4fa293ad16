"""benchmarks.search_scale: realistic galleries from a face model, the index kinds measured against exact search
with a recall floor, and the JSON line the benchmark prints (small sizes; the figures are in benchmarks/README.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from benchmarks import search_scale
from benchmarks.search_scale import FaceModel, build, changes, make_gallery, time_queries
from index import Tuning

DIM = 32


def _model(seed: int = 0) -> FaceModel:
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((DIM, DIM)).astype(np.float32) / np.sqrt(DIM)
    return FaceModel(
        centre_mean=np.zeros(DIM, dtype=np.float32),
        centre_chol=centre,
        face_chol=(0.5 * centre).astype(np.float32),
        spreads=np.array([0.5, 1.0, 1.5], dtype=np.float32),
    )


def test_a_fusion_s_faces_and_identity_means_are_fusion_vectors() -> None:
    """Each of a fusion's parts is a unit vector scaled by 1/sqrt(2), in the faces drawn and in the people's means,
    as the model and the service's index make them (a whole-vector normalisation would not keep that)."""
    half = DIM // 2
    model = _model()
    fused = FaceModel(model.centre_mean, model.centre_chol, model.face_chol, model.spreads, parts=(half, half))
    gallery = make_gallery(fused, faces=600, per_person=5, queries=50, seed=2)
    for x in (gallery.x, search_scale.identity_level(gallery, fused.parts).x):
        for part in (x[:, :half], x[:, half:]):
            np.testing.assert_allclose(np.linalg.norm(part, axis=1), np.sqrt(0.5), rtol=1e-5)


def test_gallery_shape_and_genuine_probes_are_closer() -> None:
    gallery = make_gallery(_model(), faces=3000, per_person=5, queries=200, seed=1)
    assert gallery.x.shape == (3000, DIM) and np.allclose(np.linalg.norm(gallery.x, axis=1), 1, atol=1e-5)
    assert (gallery.probe_person >= 0).sum() == 100
    top = (gallery.probes @ gallery.x.T).max(axis=1)
    assert top[gallery.probe_person >= 0].mean() > top[gallery.probe_person < 0].mean() + 0.1


@pytest.mark.parametrize(
    ("kind", "floor"), [("fp16", 0.99), ("sq8", 0.97), ("hnsw", 0.99), ("pq", 0.97), ("ivfpq", 0.93)]
)
def test_each_kind_against_exact_search(kind: str, floor: float) -> None:
    gallery = make_gallery(_model(), faces=12_000, per_person=5, queries=200, seed=2)
    tuning = Tuning(ef_search=128)
    exact, _ = build("flat", gallery.x, tuning)
    index, _ = build(kind, gallery.x, tuning)
    _, e_ids, _ = time_queries(exact, gallery.probes, 5)
    _, ids, _ = time_queries(index, gallery.probes, 5)
    recall = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, e_ids, strict=True)]))
    assert recall >= floor, (kind, recall)
    shown = changes(index, gallery, np.random.default_rng(3), n=50)
    assert shown["added_found_at_1"] == 1.0 and shown["removed_returned"] == 0


def test_json_line_names_the_service_choice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = (np.random.default_rng(4).standard_normal((300, DIM)) / np.sqrt(DIM)).astype(np.float32)
    people = np.repeat(np.arange(60), 5)

    def fit(cache: Path, datasets: Sequence[str], view: str) -> tuple[FaceModel, np.ndarray, np.ndarray]:
        assert view == "dlib_sface"  # the --view default: the default model
        x = real + np.repeat(np.random.default_rng(5).standard_normal((60, DIM)).astype(np.float32), 5, axis=0)
        return _model(), x / np.linalg.norm(x, axis=1, keepdims=True), people

    monkeypatch.setattr(search_scale, "fit_face_model", fit)
    search_scale.main(["--faces", "3000", "--queries", "100", "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["kind"] == "flat"  # the service's choice at this size
    for key in ("faces", "p50_ms", "p99_ms", "recall_at_1", "exact_p50_ms", "memory_bytes", "add_p50_ms"):
        assert key in result
    assert result["recall_at_1"] == 1.0 and result["removed_returned"] == 0
    assert result["ram_index_ratio"] > 0 and result["ram_gallery_ratio"] > 0  # measured in fresh processes


def test_missing_embedding_cache_says_how_to_make_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        search_scale.main(["--faces", "100", "--cache", str(tmp_path), "--json"])
    assert "benchmarks.open_set embed" in capsys.readouterr().err
    # a data set asked for and not cached is named, even when others are (the model would silently change)
    np.savez(tmp_path / "att.faces.npz", identity=np.array(["att/s1"]), found=np.array([True]))
    with pytest.raises(SystemExit):
        search_scale.main(["--faces", "100", "--cache", str(tmp_path), "--datasets", "att", "lfw", "--json"])
    assert "--datasets lfw" in capsys.readouterr().err
