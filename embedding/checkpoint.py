"""Model files: one `torch.save` file holding the model card and the backbone weights.

Layout: {"format": "facedb-model/1", "card": ModelCard.model_dump(mode="json"),
"state_dict": {name: tensor}}. Loaded with `weights_only=True`, so no code is executed.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import torch
from pydantic import ValidationError
from torch import nn

from embedding.backbones import build_backbone
from embedding.card import ModelCard
from embedding.errors import ModelLoadError

FORMAT: Final = "facedb-model/1"
VERSION_HEX_CHARS: Final = 12


def weights_version(arch: str, state_dict: Mapping[str, torch.Tensor]) -> str:
    """Content-derived version: first 12 hex digits of sha256 over arch + tensors in key order.

    Each tensor contributes its name, dtype, shape and raw bytes, so identical weights give the
    same version on every machine.
    """
    digest = hashlib.sha256()
    digest.update(f"{FORMAT}\0{arch}\0".encode())
    for name, tensor in state_dict.items():
        cpu = tensor.detach().to("cpu").contiguous()
        digest.update(json.dumps([name, str(cpu.dtype), list(cpu.shape)]).encode())
        digest.update(cpu.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:VERSION_HEX_CHARS]


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain dict of detached, contiguous CPU copies of the model's parameters and buffers."""
    return {name: t.detach().to("cpu").clone().contiguous() for name, t in model.state_dict().items()}


def save_checkpoint(path: Path, *, model: nn.Module, card: ModelCard) -> None:
    """Write `model`'s weights and `card` to `path`.

    The stored card's `version` is replaced by `weights_version(card.arch, weights)`, so the same
    weights always get the same version. The file is written to a temporary name first and renamed,
    so readers never see a partial file.
    """
    state_dict = _cpu_state_dict(model)
    written = card.model_copy(update={"version": weights_version(card.arch, state_dict)})
    payload = {"format": FORMAT, "card": written.model_dump(mode="json"), "state_dict": state_dict}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def replace_card(source: Path, target: Path, card: ModelCard) -> ModelCard:
    """Write `source`'s weights, byte for byte the same tensors (dtype included), with `card` to `target`.

    For card-only changes (calibration, measured metrics): the weights, and so the version, stay exactly as
    stored, even where a round trip through the model would change them (float16 storage). The card's
    `version` is set from the stored weights; the written file is then loaded and checked once. Returns its card.
    """
    try:
        payload: Any = torch.load(Path(source), map_location="cpu", weights_only=True)
    except Exception as exc:  # same failure modes as `load_checkpoint_bytes`
        raise ModelLoadError(f"{source}: cannot read model file: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise ModelLoadError(f"{source}: not a facedb model file")
    written = card.model_copy(update={"version": weights_version(card.arch, payload["state_dict"])})
    payload["card"] = written.model_dump(mode="json")
    target = Path(target)
    tmp = target.with_name(target.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(target)
    return load_checkpoint(target)[1]


def _parse(payload: object, source: str) -> tuple[nn.Module, ModelCard]:
    """Validate a loaded payload and rebuild the (eval-mode, CPU) model."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelLoadError(f"{source}: not a facedb model file (expected format {FORMAT!r}, found {found!r})")
    try:
        card = ModelCard.model_validate(payload.get("card"))
    except ValidationError as exc:
        raise ModelLoadError(f"{source}: invalid model card: {exc}") from exc
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ModelLoadError(f"{source}: missing or invalid state_dict")
    version = weights_version(card.arch, state_dict)
    if version != card.version:
        raise ModelLoadError(
            f"{source}: weights do not match the card (card version {card.version!r}, weights give {version!r})"
        )
    try:
        model = build_backbone(card.arch, **card.arch_params)
        model.load_state_dict(state_dict, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{source}: cannot build {card.arch!r} from the file: {exc}") from exc
    model.eval()
    probe = torch.zeros(1, card.input.channels, card.input.height, card.input.width)
    try:
        with torch.inference_mode():
            out = model(probe)
    except RuntimeError as exc:
        raise ModelLoadError(f"{source}: the model does not accept the card's input spec: {exc}") from exc
    if tuple(out.shape) != (1, card.embedding_dim):
        raise ModelLoadError(
            f"{source}: the model outputs shape {tuple(out.shape)}, card says embedding_dim={card.embedding_dim}"
        )
    return model, card


def load_checkpoint_bytes(data: bytes, *, source: str = "<bytes>") -> tuple[nn.Module, ModelCard]:
    """`load_checkpoint` for a model file already read into memory; `source` names it in errors."""
    try:
        payload: Any = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors, ...
        raise ModelLoadError(f"{source}: cannot read model file: {type(exc).__name__}: {exc}") from exc
    return _parse(payload, source)


def load_checkpoint(path: Path) -> tuple[nn.Module, ModelCard]:
    """Load a model file written by `save_checkpoint`.

    Returns the backbone (CPU, eval mode; it maps float32 (N, C, H, W) to unnormalised (N, D)) and
    its card. Raises `ModelLoadError` for a missing, unreadable, foreign or inconsistent file.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read model file: {exc}") from exc
    return load_checkpoint_bytes(data, source=str(path))
