"""Fusions: several embedders served as one ONNX model with one input and one vector.

A fusion's vector is its models' L2-normalised vectors concatenated and scaled by 1/sqrt(k), so its cosine with
another fusion vector is the mean of the k models' cosines, and FAISS serves it as one vector (the card's
`parts` tell the index to take identity means part by part). Each model's own crop is cut from the fusion's one
input, a face aligned to `FUSION_INPUT`'s template, by a bilinear resampling (ONNX GridSample) along the
similarity between the two templates: a model whose template is the input's, as SFace's is here, reads its pixels
unchanged. `fusion_graph` builds the graph; `scripts/build_fusion.py` writes dlib's ResNet + SFace with its card.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from embedding.align import ARCFACE_112x123, FaceTemplate, similarity_transform, template_for_spec, transform_points
from embedding.card import InputSpec

FUSION_INPUT: Final = InputSpec(
    height=ARCFACE_112x123.size[1],
    width=ARCFACE_112x123.size[0],
    channels=3,
    mean=0.0,
    std=1.0 / 255.0,
    face_template="arcface_112x123",
    landmarks="dlib5",
)
"""RGB in 0-255, aligned to `ARCFACE_112x123` by dlib's five points: what a fusion's graph takes."""

INPUT_NAME: Final = "face"
OUTPUT_NAME: Final = "embedding"
OPSET: Final = 21
IR_VERSION: Final = 10


@dataclass(frozen=True)
class Part:
    """One model of a fusion: its graph (``onnx.ModelProto``, batch dimension dynamic), the names of its image
    input and embedding output, its input spec (template and value scaling) and embedding dims."""

    name: str
    model: Any
    input: str
    output: str
    spec: InputSpec
    dim: int


def sampling_grid(frame: FaceTemplate, crop: FaceTemplate) -> np.ndarray:
    """float32 (1, h, w, 2): for each pixel centre of ``crop`` (w x h), where it lies in ``frame``, in GridSample's
    normalised coordinates (align_corners=0: -1 and 1 are the frame's outer edges)."""
    to_frame = similarity_transform(crop.continuous_points(), frame.continuous_points())
    width, height = crop.size
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    points = transform_points(np.stack([cols.ravel(), rows.ravel()], axis=1), to_frame)
    grid = 2.0 * points / np.array(frame.size, dtype=np.float64) - 1.0
    return grid.reshape(1, height, width, 2).astype(np.float32)


def _stored_as_half(model: Any) -> list[Any]:
    """Store a graph's float32 initializers that float16 holds exactly (dlib's ResNet ships in float16) as float16,
    each with a Cast back to float32 (onnxruntime folds it when the session starts): half the bytes, the same
    weights. Returns the Cast nodes, to run before the graph's own."""
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    casts = []
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        half = values.astype(np.float16)
        if values.size < 256 or not np.array_equal(half.astype(np.float32), values):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, f"{name}/half"))
        casts.append(helper.make_node("Cast", [f"{name}/half"], [name], to=TensorProto.FLOAT))
    return casts


def _strip_debug_info(model: Any) -> None:
    """Drop the exporter's per-node debug records (PyTorch's stack traces name the machine's file paths); they play
    no part in inference."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def fusion_graph(parts: Sequence[Part], *, name: str, frame: FaceTemplate = ARCFACE_112x123) -> Any:
    """One ``onnx.ModelProto``: input `INPUT_NAME` float32 (N, 3, H, W) in 0-255 aligned to ``frame``; output
    `OUTPUT_NAME` float32 (N, sum of dims), the parts' normalised vectors concatenated and scaled by 1/sqrt(k)."""
    import onnx  # noqa: PLC0415 - only needed to build model files
    from onnx import TensorProto, compose, helper, numpy_helper  # noqa: PLC0415

    if len(parts) < 2:
        raise ValueError("a fusion needs at least two parts")
    width, height = frame.size
    nodes = [
        helper.make_node("Shape", [INPUT_NAME], ["fusion/shape"]),
        helper.make_node("Slice", ["fusion/shape", "fusion/zero", "fusion/one"], ["fusion/batch"]),
    ]
    constants: dict[str, np.ndarray] = {
        "fusion/zero": np.array([0], dtype=np.int64),
        "fusion/one": np.array([1], dtype=np.int64),
        "fusion/scale": np.array(1.0 / math.sqrt(len(parts)), dtype=np.float32),
    }
    inner_nodes: list[Any] = []
    initializers: list[Any] = []
    normalised = []
    for part in parts:
        crop = template_for_spec(part.spec)
        if crop.size != (part.spec.width, part.spec.height):
            raise ValueError(f"{part.name}: input {part.spec.width}x{part.spec.height} is not its template's size")
        p = f"{part.name}/"
        model = compose.add_prefix(part.model, p)
        grid = sampling_grid(frame, crop)
        # The part's own scaling of 0-255 values: (x / 255 - mean) / std.
        constants[f"fusion/{part.name}/grid"] = grid
        constants[f"fusion/{part.name}/gshape"] = np.array(grid.shape[1:], dtype=np.int64)
        constants[f"fusion/{part.name}/mul"] = np.array(1.0 / (255.0 * part.spec.std), dtype=np.float32)
        constants[f"fusion/{part.name}/sub"] = np.array(part.spec.mean / part.spec.std, dtype=np.float32)
        q = f"fusion/{part.name}/"
        nodes += [
            helper.make_node("Concat", ["fusion/batch", f"{q}gshape"], [f"{q}full"], axis=0),
            helper.make_node("Expand", [f"{q}grid", f"{q}full"], [f"{q}gridn"]),
            helper.make_node(
                "GridSample",
                [INPUT_NAME, f"{q}gridn"],
                [f"{q}crop"],
                mode="linear",
                padding_mode="border",
                align_corners=0,
            ),
            helper.make_node("Mul", [f"{q}crop", f"{q}mul"], [f"{q}scaled"]),
            helper.make_node("Sub", [f"{q}scaled", f"{q}sub"], [p + part.input]),
        ]
        _strip_debug_info(model)
        inner_nodes += _stored_as_half(model) + list(model.graph.node)
        initializers += list(model.graph.initializer)
        normalised.append(f"{q}unit")
        inner_nodes.append(helper.make_node("LpNormalization", [p + part.output], [f"{q}unit"], axis=1, p=2))
    tail = [
        helper.make_node("Concat", normalised, ["fusion/joined"], axis=1),
        helper.make_node("Mul", ["fusion/joined", "fusion/scale"], [OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes + inner_nodes + tail,
        name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, height, width])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", sum(p.dim for p in parts)])],
        initializer=[numpy_helper.from_array(v, k) for k, v in constants.items()] + initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    model.producer_name = "facedb"
    onnx.checker.check_model(model)
    return model
