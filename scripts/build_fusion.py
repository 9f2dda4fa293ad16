"""Write ``embedding/models/dlib_sface.onnx``: dlib's ResNet and SFace served as one model (uncalibrated card).

    python -m scripts.build_fusion [--out embedding/models/dlib_sface.onnx]
    python -m scripts.build_fusion --render-only      # writes embedding/models/dlib_sface.md from the card alone

The graph is `embedding.fusion.fusion_graph` over dlib's ResNet (`dlib_resnet.pt` exported to ONNX, weights
unchanged; needs torch) and SFace (`embedding.sface.sface_graph`, the pinned int8 weights). Both take their faces
aligned by dlib's five points, cut from one `FUSION_INPUT` crop. Thresholds and the 1:N table are then measured by
`python -m benchmarks.open_set calibrate embedding/models/dlib_sface.onnx --view dlib_sface`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from embedding.card import ModelCard
from embedding.embedder import dlib_resnet_model_path, read_card
from embedding.fusion import FUSION_INPUT, INPUT_NAME, OUTPUT_NAME, Part, fusion_graph
from embedding.onnx_embedder import graph_sha256, write_onnx_card
from embedding.sface import SFACE_INPUT, sface_graph
from scripts.build_sface import TRAINING as SFACE_TRAINING
from scripts.build_sface import card_cli

REPO = Path(__file__).resolve().parent.parent

INTRO = [
    "A fusion of two embedders served as one model: dlib's ResNet (`dlib_resnet.pt`, CC0) and SFace (OpenCV model",
    "zoo, Apache-2.0), each on its own crop of one face aligned by dlib's five points; the vector is their two",
    "normalised 128-d vectors side by side, scaled by 1/sqrt(2), so a cosine is the mean of the two models' cosines.",
    "facedb's default face embedder (after SFace alone, `sface.md`).",
    "Written by `python -m scripts.build_fusion`, calibrated by",
]


def _dlib_part(tmp: Path) -> Part:
    import onnx  # noqa: PLC0415

    from embedding.onnx_export import export_onnx  # noqa: PLC0415 - needs torch

    exported = tmp / "dlib.onnx"
    card = export_onnx(dlib_resnet_model_path(), exported)
    model = onnx.load(exported)
    del model.metadata_props[:]
    return Part("dlib", model, "input", "embedding", card.input, card.embedding_dim)


def build(out: Path) -> ModelCard:
    """Write the uncalibrated fusion and return its card."""
    dlib_card = read_card(dlib_resnet_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        parts = [_dlib_part(Path(tmp)), Part("sface", sface_graph(), "data", "fc1", SFACE_INPUT, 128)]
    model = fusion_graph(parts, name="dlib_sface")
    card = ModelCard(
        name="dlib_sface",
        version=graph_sha256(model)[:12],
        arch="onnx",
        arch_params={
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "parts": [f"dlib_resnet@{dlib_card.version}", "sface"],
        },
        embedding_dim=sum(p.dim for p in parts),
        input=FUSION_INPUT,
        training={
            "parts": "dlib's ResNet (dlib_resnet.pt, no mirror image here) and SFace, in that order",
            "dlib_resnet": str(dlib_card.training["origin"]),
            "dlib_resnet_source": f"{dlib_card.training['source_file']} "
            f"(sha256 {dlib_card.training['source_sha256']}), read into dlib_resnet.pt@{dlib_card.version}",
            **{f"sface_{k}": v for k, v in SFACE_TRAINING.items()},
        },
        metrics={},
        thresholds={},
        default_threshold=1.0,
        default_threshold_far=0.0,
        parts=[p.dim for p in parts],
        notes="UNCALIBRATED: run `python -m benchmarks.open_set calibrate` before serving this model.",
    )
    write_onnx_card(model, card, out)
    return card


def main() -> None:
    card_cli(__doc__.splitlines()[0], REPO / "embedding/models/dlib_sface.onnx", build, intro=INTRO)


if __name__ == "__main__":
    main()
