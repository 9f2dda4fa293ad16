"""SFace (OpenCV model zoo, Apache-2.0) as a facedb ONNX model: the int8 weights of a pinned registry package.

SFace is a MobileFaceNet trained with the sigmoid-constrained hypersphere loss (Zhong et al., 2021); the zoo's
``face_recognition_sface_2021dec`` takes a 112x112 RGB face aligned to the ArcFace five-point template, in 0-255
(the graph itself subtracts 127.5 and multiplies by 1/128), and returns a 128-d embedding. The file is the
block-quantised int8 one shipped inside `ZOO_PACKAGE` (pinned by `SFACE_SHA256`); `sface_graph` makes it
runnable by any onnxruntime without changing a weight (`embedding.onnx_quant.fold_dequantize`) and gives it a
dynamic batch. `scripts/build_sface.py` writes it with its facedb card as ``embedding/models/sface.onnx``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from embedding.card import InputSpec
from embedding.onnx_quant import fold_dequantize, read_pinned, zoo_file

SFACE_FILE: Final = "models/face_recognition_sface_2021dec_int8bq.onnx"
"""Path of the weights inside `embedding.onnx_quant.ZOO_PACKAGE`."""

SFACE_SHA256: Final = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
"""SHA-256 of the int8 file; anything else is refused."""

SFACE_INPUT: Final = InputSpec(
    height=112, width=112, channels=3, mean=0.0, std=1.0 / 255.0, face_template="arcface_112", landmarks="dlib5"
)
"""RGB in 0-255 (x / 255 scaled back by std = 1/255), ArcFace-aligned: what OpenCV's FaceRecognizerSF feeds it."""


def sface_path() -> Path:
    """Where the pinned package installed the SFace weights."""
    return zoo_file(SFACE_FILE)


def sface_graph(path: Path | None = None) -> Any:
    """The pinned int8 SFace file as an ``onnx.ModelProto`` that any onnxruntime runs, batch dimension dynamic.

    Raises `ModelLoadError` if the file is missing or is not the pinned one.
    """
    import onnx  # noqa: PLC0415 - only needed to build the model file

    model = onnx.load_from_string(read_pinned(path or sface_path(), SFACE_SHA256, "SFace"))
    fold_dequantize(model)
    graph = model.graph
    image_inputs = [i for i in graph.input if i.name == "data"]
    del graph.input[:]
    graph.input.extend(image_inputs)
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(model)
    return model
