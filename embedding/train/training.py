"""Training a face embedder with a margin head: the engine behind `facedb train`.

Data: one or more one-folder-per-identity sets (`embedding.train.data.DatasetSpec`), decoded, framed (framing
"detect" is the serving path: detect, align, cut the model's face template) and preprocessed once with the
model's `InputSpec`, and kept in memory; augmentation (`embedding.train.data.augment`) runs on those tensors.
Optional knowledge distillation (`distill="dlib"`): the teacher's embedding of each detected face
(`embedding.train.teacher`) is a target for the student's own embedding, `distill_weight * (1 - cos)`, added to
the margin head's cross-entropy. Backbone and head are built by name from the
registries. SGD (Nesterov) or Adam, linear warm-up then cosine decay, weight decay on weights only,
AMP (float16 autocast + GradScaler) on CUDA, fixed seeds, a resumable state file written after every
epoch (`<out>.state`), and one model file at the end via `save_checkpoint` whose card records the
architecture, input spec, training sets, held-out identities and the training history.

Thresholds are not part of training: the card is written uncalibrated (empty thresholds) and then,
when calibration pairs are given, calibrated through the saved file (`embedding.train.cli.calibrate_model`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from embedding.backbones import build_backbone
from embedding.card import FaceTemplateName, InputSpec, ModelCard
from embedding.checkpoint import save_checkpoint
from embedding.preprocess import to_model_input
from embedding.train.data import (
    DETECT,
    AugmentConfig,
    DatasetSpec,
    augment,
    list_identity_folder,
    prepare_inputs,
    select_images,
)
from embedding.train.faceset import align_files
from embedding.train.heads import build_head
from embedding.train.teacher import TEACHER_DIM, TEACHER_NAME


class TrainingError(RuntimeError):
    """A training run cannot start or continue (bad data, bad config, incompatible resume state)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (recorded in the card and the resume state)."""

    data: tuple[DatasetSpec, ...]
    out: Path
    name: str = "facedb-model"
    backbone: str = "compact_iresnet"
    backbone_params: dict[str, Any] = field(default_factory=dict)
    head: str = "cosface"
    head_params: dict[str, Any] = field(default_factory=dict)
    height: int = 64
    width: int = 52
    channels: Literal[1, 3] = 1
    mean: float = 0.5
    std: float = 0.5
    resize: Literal["stretch", "center_crop"] = "center_crop"
    face_template: FaceTemplateName | None = None
    embedding_dim: int | None = None
    epochs: int = 20
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    seed: int = 0
    threads: int | None = None
    device: str | None = None
    amp: bool = True
    exclude_identities: frozenset[str] = frozenset()
    exclude_rule: str = ""
    min_images: int = 2
    max_images: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    distill: Literal["dlib"] | None = None
    distill_weight: float = 20.0
    distill_center: bool = True
    workers: int = 2
    cache_dir: Path | None = None
    resume: bool = False
    progress: bool = True

    @property
    def input_spec(self) -> InputSpec:
        """The model's input spec."""
        return InputSpec(
            height=self.height,
            width=self.width,
            channels=self.channels,
            mean=self.mean,
            std=self.std,
            resize=self.resize,
            face_template=self.face_template,
        )

    @property
    def state_path(self) -> Path:
        """Resume state file beside the output."""
        return self.out.with_name(self.out.name + ".state")

    def fingerprint(self) -> str:
        """Hash of the settings a resumed run must share (everything but epochs, resume, progress, out, device)."""
        skip = {"epochs", "resume", "progress", "out", "device", "threads", "cache_dir", "workers"}
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        return hashlib.sha256(json.dumps(values, default=_jsonable, sort_keys=True).encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary for the card (identity list excluded; the card lists it separately)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.pop("exclude_identities")
        values.pop("progress")
        out: dict[str, Any] = json.loads(json.dumps(values, default=_jsonable))
        return out


def _jsonable(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, frozenset | set):
        return sorted(str(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass
class TrainData:
    """Prepared training data and provenance.

    inputs: float32 (N, C, H, W); labels: int64 (N,), -1 = no class (an image used for distillation only);
    teacher: float32 (N, 128) unit teacher embeddings and teacher_mask: bool (N,) where a row is valid, or None.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    sources: dict[str, dict[str, Any]]
    held_out: list[str]
    teacher: torch.Tensor | None = None
    teacher_mask: torch.Tensor | None = None


def load_train_data(config: TrainConfig) -> TrainData:
    """List, filter and preprocess every training image of `config.data` (see module doc).

    Data sets with framing "detect" go through the serving path (`embedding.train.faceset.align_files`). With
    `config.distill`, every data set must use it; images of identities with fewer than `min_images` images
    are then kept for the distillation loss alone (label -1) rather than dropped.
    """
    spec = config.input_spec
    chunks: list[np.ndarray] = []
    labels_text: list[str | None] = []
    teacher_rows: list[np.ndarray] = []
    teacher_masks: list[np.ndarray] = []
    sources: dict[str, dict[str, Any]] = {}
    held_out: set[str] = set()
    for dataset in config.data:
        if config.distill and dataset.framing != DETECT:
            raise TrainingError(
                f"--distill needs framing 'detect' for every data set; {dataset.root} has {dataset.framing!r}"
            )
        try:
            listed = list_identity_folder(dataset)
        except FileNotFoundError as exc:
            raise TrainingError(str(exc)) from exc
        detect = dataset.framing == DETECT
        selection = select_images(
            listed,
            exclude=config.exclude_identities,
            min_images=1 if config.distill else config.min_images,
            framing=dataset.framing,
        )
        held_out.update(selection.excluded)
        counts = Counter(image.label for image in selection.images)
        labelled = {name for name, n in counts.items() if n >= config.min_images}
        paths = [image.path for image in selection.images]
        record: dict[str, Any] = {
            "root": str(dataset.root),
            "framing": dataset.framing,
            "identities": len(labelled),
            "images": len(selection.images),
            "excluded_identities": len(selection.excluded),
            "identities_with_too_few_images": len(selection.too_few_images) + len(counts) - len(labelled),
            "images_of_other_size_skipped": selection.wrong_size,
        }
        if detect:
            aligned = align_files(
                paths,
                spec,
                teacher=config.distill is not None,
                workers=config.workers,
                cache_dir=config.cache_dir,
                desc=dataset.name,
                progress=config.progress,
            )
            chunks.extend(to_model_input(list(aligned.crops[i : i + 512]), spec) for i in range(0, len(aligned), 512))
            record["faces_detected"] = int(aligned.detected.sum())
            record["images_unlabelled_distill_only"] = sum(counts[name] for name in counts if name not in labelled)
            if aligned.teacher is not None:
                teacher_rows.append(aligned.teacher)
                teacher_masks.append(aligned.detected)
        else:
            chunks.append(
                prepare_inputs(
                    paths, dataset.framing, spec, cache_dir=config.cache_dir, desc="train", progress=config.progress
                )
            )
        labels_text.extend(image.label if image.label in labelled else None for image in selection.images)
        sources[dataset.name] = record
    if not labels_text:
        raise TrainingError("no training images left after exclusions")
    class_names = sorted({name for name in labels_text if name is not None})
    if len(class_names) < 2:
        raise TrainingError(f"need at least 2 identities to train, found {len(class_names)}")
    index = {name: i for i, name in enumerate(class_names)}
    labels = torch.tensor([index[name] if name is not None else -1 for name in labels_text], dtype=torch.int64)
    tensor = torch.from_numpy(np.concatenate(chunks))
    teacher = torch.from_numpy(np.concatenate(teacher_rows)) if teacher_rows else None
    mask = torch.from_numpy(np.concatenate(teacher_masks)) if teacher_masks else None
    if teacher is not None and mask is not None and config.distill_center and bool(mask.any()):
        teacher = _centre(teacher, mask)
    if config.max_images and config.max_images < len(labels):
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(config.seed))[: config.max_images]
        tensor, labels = tensor[keep], labels[keep]
        teacher = teacher[keep] if teacher is not None else None
        mask = mask[keep] if mask is not None else None
    return TrainData(tensor, labels, class_names, sources, sorted(held_out), teacher, mask)


def _centre(teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Teacher rows minus their mean over the valid rows, re-normalised; invalid rows stay zero.

    dlib's embeddings share a large common component (mean vector norm ~0.9: two random people score cosine
    ~0.8), so matching raw targets mostly teaches that component. Centred, random people score ~0 and the
    distillation loss weighs the directions that tell people apart.
    """
    mean = teacher[mask].mean(dim=0, keepdim=True)
    centred = F.normalize(teacher - mean, dim=1)
    return torch.where(mask[:, None], centred, torch.zeros_like(centred))


def param_groups(modules: Sequence[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear/head weights only (not on BN, PReLU or biases); frozen params skipped."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in modules:
        for param in module.parameters():
            if param.requires_grad:
                (decay if param.ndim > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to zero at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, progress)))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return a CPU generator for data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def build_model(config: TrainConfig) -> tuple[nn.Module, dict[str, Any], int]:
    """The backbone with the input size of the config: (model, arch_params, embedding dim)."""
    spec = config.input_spec
    params: dict[str, Any] = {
        "in_channels": spec.channels,
        "input_height": spec.height,
        "input_width": spec.width,
        **config.backbone_params,
    }
    if config.embedding_dim is not None:
        params["embedding_dim"] = config.embedding_dim
    try:
        model = build_backbone(config.backbone, **params)
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainingError(f"cannot build backbone {config.backbone!r} with {params}: {exc}") from exc
    model.eval()
    with torch.inference_mode():
        dim = int(model(torch.zeros(2, spec.channels, spec.height, spec.width)).shape[1])
    return model, params, dim


@dataclass
class TrainResult:
    """What a finished run produced."""

    path: Path
    card: ModelCard
    history: list[dict[str, float]]
    train_seconds: float


EpochCallback = Callable[[int, nn.Module, dict[str, float]], None]


def train(config: TrainConfig, *, on_epoch: EpochCallback | None = None) -> TrainResult:
    """Run training as configured and write the model file `config.out` (uncalibrated card).

    `on_epoch(epoch, model, record)` is called after each epoch (model in eval mode) and may add
    entries to `record` (e.g. a held-out metric) that go into the card's history.
    Raises `TrainingError` for unusable data/config or an incompatible resume state.
    """
    if config.epochs < 1 or config.batch_size < 2:
        raise TrainingError(f"need epochs >= 1 and batch_size >= 2, got {config.epochs}, {config.batch_size}")
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_amp = config.amp and device.type == "cuda"
    gen = seed_everything(config.seed)
    data = load_train_data(config)
    model, arch_params, dim = build_model(config)
    if data.teacher is not None and dim != TEACHER_DIM:
        raise TrainingError(f"--distill matches the teacher's {TEACHER_DIM}-d embedding; the backbone gives {dim}-d")
    try:
        head = build_head(config.head, dim, len(data.class_names), **config.head_params)
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainingError(f"cannot build head {config.head!r} with {config.head_params}: {exc}") from exc
    model.to(device)
    head.to(device)
    groups = param_groups([model, head], config.weight_decay)
    optimizer: torch.optim.Optimizer
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    else:
        optimizer = torch.optim.Adam(groups, lr=config.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    batch_size = min(config.batch_size, len(data.labels))
    steps_per_epoch = max(1, len(data.labels) // batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = min(total_steps, max(1, round(config.warmup_epochs * steps_per_epoch)))
    spec = config.input_spec

    start_epoch, step, history = 0, 0, []
    if config.resume and config.state_path.exists():
        state = torch.load(config.state_path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != config.fingerprint():
            raise TrainingError(f"{config.state_path}: saved by a run with different settings; cannot resume")
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, step, history = int(state["epoch"]), int(state["step"]), list(state["history"])
        if config.progress:
            print(f"resuming from {config.state_path} after epoch {start_epoch}", flush=True)

    started = time.time()
    for epoch in range(start_epoch + 1, config.epochs + 1):
        model.train()
        head.train()
        order = torch.randperm(len(data.labels), generator=gen)
        loss_sum, correct, seen, labelled = 0.0, 0, 0, 0
        distill_sum, distill_seen = 0.0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch}/{config.epochs}",
            leave=False,
            mininterval=2,
            disable=not config.progress,
        )
        for batch_index in bar:
            idx = order[batch_index * batch_size : (batch_index + 1) * batch_size]
            x = augment(data.inputs[idx], spec, gen, config.augment).to(device, non_blocking=True)
            y = data.labels[idx].to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup, config.lr)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                embeddings = model(x).float()
            has_class = y >= 0
            logits = head(embeddings[has_class], y[has_class])
            loss = F.cross_entropy(logits, y[has_class]) if len(logits) else embeddings.sum() * 0.0
            if data.teacher is not None and data.teacher_mask is not None:
                valid = data.teacher_mask[idx].to(device)
                if bool(valid.any()):
                    target = data.teacher[idx].to(device)[valid]
                    distill = (1.0 - F.cosine_similarity(embeddings[valid], target, dim=1)).mean()
                    loss = loss + config.distill_weight * distill
                    distill_sum += float(distill.detach()) * int(valid.sum())
                    distill_seen += int(valid.sum())
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {float(loss)} at epoch {epoch}, step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y[has_class]).sum())
            seen += len(y)
            labelled += int(has_class.sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        model.eval()
        record: dict[str, float] = {
            "epoch": epoch,
            "loss": loss_sum / seen,
            "train_acc": correct / max(1, labelled),
            "lr": lr_at(step - 1, total_steps, warmup, config.lr),
            "minutes": (time.time() - started) / 60,
        }
        if distill_seen:
            record["distill_cos"] = 1.0 - distill_sum / distill_seen
        if on_epoch is not None:
            on_epoch(epoch, model, record)
        history.append(record)
        if config.progress:
            extra = "  ".join(
                f"{k} {v:.4f}" for k, v in record.items() if k not in {"epoch", "loss", "train_acc", "lr", "minutes"}
            )
            print(
                f"epoch {epoch:3d}  loss {record['loss']:.4f}  train-acc {record['train_acc']:.3f}  {extra}  "
                f"{record['minutes']:.1f} min",
                flush=True,
            )
        _save_state(config, model, head, optimizer, scaler, gen, epoch, step, history)
    train_seconds = time.time() - started

    model.eval().to("cpu")
    card = ModelCard(
        name=config.name,
        version="",
        arch=config.backbone,
        arch_params=arch_params,
        embedding_dim=dim,
        input=spec,
        training=_training_record(config, data, history, head, train_seconds),
        metrics={},
        thresholds={},
        default_threshold=1.0,
        default_threshold_far=0.0,
        notes="UNCALIBRATED: run `facedb calibrate` before serving this model.",
    )
    config.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(config.out, model=model, card=card)
    from embedding.checkpoint import load_checkpoint  # noqa: PLC0415 - re-read: the card as written

    _, written = load_checkpoint(config.out)
    return TrainResult(config.out, written, history, train_seconds)


def _save_state(
    config: TrainConfig,
    model: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    gen: torch.Generator,
    epoch: int,
    step: int,
    history: list[dict[str, float]],
) -> None:
    """Write the resume state atomically."""
    state = {
        "fingerprint": config.fingerprint(),
        "model": model.state_dict(),
        "head": head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "epoch": epoch,
        "step": step,
        "history": history,
    }
    config.state_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = config.state_path.with_name(config.state_path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(config.state_path)


def _training_record(
    config: TrainConfig, data: TrainData, history: list[dict[str, float]], head: nn.Module, seconds: float
) -> dict[str, Any]:
    """The card's `training` section."""
    return {
        "tool": "facedb train (embedding/training.py)",
        "config": config.as_dict(),
        "datasets": data.sources,
        "identities": len(data.class_names),
        "images": len(data.labels),
        "held_out": {"rule": config.exclude_rule or "none", "identities": data.held_out},
        "head": {"type": config.head, **config.head_params, "class": type(head).__name__},
        "distillation": (
            {
                "teacher": TEACHER_NAME,
                "loss": "distill_weight * mean(1 - cos(student, teacher)) beside the margin head's cross-entropy",
                "targets": "teacher embeddings minus their training-set mean, re-normalised"
                if config.distill_center
                else "teacher embeddings as they are",
                "weight": config.distill_weight,
                "images_with_target": int(data.teacher_mask.sum()) if data.teacher_mask is not None else 0,
            }
            if config.distill
            else None
        ),
        "augmentation": config.augment.describe(config.channels),
        "history": history,
        "train_minutes": round(seconds / 60, 2),
        "hardware": f"{platform.machine()}, torch threads {torch.get_num_threads()}",
        "torch": torch.__version__,
    }
