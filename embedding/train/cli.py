"""Model commands for the `facedb` CLI: train, evaluate, calibrate, export-onnx.

`register(app)` adds them to a Typer app (the service's `facedb` app calls it). The functions behind
the commands (`verification_scores`, `evaluate_model`, `calibrate_model`) are usable from Python.
Every error a user can cause is reported as one line on stderr with exit status 1.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, get_args

import numpy as np
import typer

from embedding.card import FaceTemplateName, ModelCard
from embedding.checkpoint import load_checkpoint, replace_card, save_checkpoint
from embedding.embedder import ONNX_SUFFIXES, Embedder, load_embedder
from embedding.errors import ImageError, ModelLoadError
from embedding.onnx_embedder import foreign_card, load_onnx_model, read_onnx_card, write_onnx_card
from embedding.onnx_export import export_onnx
from embedding.train.data import (
    DETECT,
    FRAMING_NAMES,
    AugmentConfig,
    DatasetSpec,
    Pair,
    list_identity_folder,
    load_rgb_images,
    pair_identities,
    parse_folds,
    read_pairs,
)
from embedding.train.evaluation import (
    Calibration,
    IdentificationReport,
    VerificationReport,
    calibrate_thresholds,
    cross_scores,
    identification_report,
    pair_scores,
    plot_roc,
    roc_curve,
    split_identification,
    verification_report,
)
from embedding.train.training import TrainConfig, TrainingError, train

DEFAULT_FARS = (1e-1, 1e-2, 1e-3)


# ------------------------------------------------------------------------------------ library functions


def embed_paths(
    embedder: Embedder, paths: Sequence[Path], framing: str, *, chunk: int = 256, progress: bool = False
) -> np.ndarray:
    """Decode, frame and embed image files in chunks -> float32 (N, D) unit rows."""
    from tqdm import tqdm  # noqa: PLC0415

    if framing == DETECT:
        crops = load_rgb_images(paths, framing, spec=embedder.card.input, progress=progress)
        parts = [embedder.embed(crops[i : i + chunk]) for i in range(0, len(crops), chunk)]
        return np.concatenate(parts) if parts else np.zeros((0, embedder.card.embedding_dim), np.float32)
    parts = [
        embedder.embed(load_rgb_images(paths[i : i + chunk], framing))
        for i in tqdm(range(0, len(paths), chunk), desc="embed", leave=False, disable=not progress)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, embedder.card.embedding_dim), np.float32)


def verification_scores(
    embedder: Embedder, pairs: Sequence[Pair], framing: str, *, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[Path]]:
    """Embed each distinct image of `pairs` once.

    Returns (scores float64 (P,), same bool (P,), folds int (P,), embeddings (M, D), the M image paths).
    """
    paths = sorted({p.a for p in pairs} | {p.b for p in pairs})
    index = {p: i for i, p in enumerate(paths)}
    emb = embed_paths(embedder, paths, framing, progress=progress)
    scores = pair_scores(emb[[index[p.a] for p in pairs]], emb[[index[p.b] for p in pairs]])
    same = np.array([p.same for p in pairs], dtype=bool)
    folds = np.array([p.fold for p in pairs], dtype=np.int64)
    return scores, same, folds, emb, paths


def select_folds(pairs: Sequence[Pair], folds: Sequence[int] | None) -> list[Pair]:
    """The pairs of `folds` (all when None); ValueError if a fold is absent."""
    if folds is None:
        return list(pairs)
    present = {p.fold for p in pairs}
    missing = sorted(set(folds) - present)
    if missing:
        raise ValueError(f"folds {missing} are not in the pairs file (it has folds {sorted(present)})")
    return [p for p in pairs if p.fold in set(folds)]


def evaluate_model(
    model: Path,
    *,
    pairs_file: Path | None = None,
    images_dir: Path | None = None,
    folds: Sequence[int] | None = None,
    pairs_framing: str = "lfw",
    identification_dir: Path | None = None,
    identification_framing: str = "none",
    gallery_per_identity: int = 1,
    stranger_fraction: float = 0.25,
    fpir: float = 1e-2,
    seed: int = 0,
    roc_png: Path | None = None,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Verification on LFW-format pairs and/or identification on a one-folder-per-identity set.

    Any model `load_embedder` reads (calibrated or not). Returns a JSON-ready dict with "model",
    "verification" (`VerificationReport.as_dict()`) and/or "identification".
    """
    if pairs_file is None and identification_dir is None:
        raise ValueError("nothing to evaluate: give --pairs and/or --identification")
    embedder = load_embedder(model, device=device, allow_uncalibrated=True)
    embedder.load()
    card = embedder.card
    result: dict[str, Any] = {"model": {"path": str(model), "name": card.name, "version": card.version}}
    if pairs_file is not None:
        pairs = select_folds(read_pairs(pairs_file, images_dir), folds)
        start = time.perf_counter()
        scores, same, fold_ids, _, paths = verification_scores(embedder, pairs, pairs_framing, progress=progress)
        if len(np.unique(fold_ids)) >= 2:
            report: VerificationReport = verification_report(scores, same, fold_ids)
        else:  # View 1 files are one fold: split them into 10 for the k-fold threshold choice
            report = verification_report(scores, same, np.arange(len(scores)) % 10 + 1)
        result["verification"] = {
            "pairs_file": str(pairs_file),
            "framing": pairs_framing,
            "images": len(paths),
            "seconds": round(time.perf_counter() - start, 2),
            **report.as_dict(),
            "summary": report.summary(),
        }
        if roc_png is not None:
            far, tar, _ = roc_curve(scores, same)
            plot_roc(
                {f"{card.name}@{card.version} AUC {report.roc_auc:.4f}": (far, tar)},
                roc_png,
                title=f"ROC, {pairs_file.name} folds {report.folds}",
            )
            result["verification"]["roc_png"] = str(roc_png)
    if identification_dir is not None:
        images = list_identity_folder(DatasetSpec(identification_dir, identification_framing))
        labels = np.array([image.identity for image in images])
        emb = embed_paths(embedder, [image.path for image in images], identification_framing, progress=progress)
        split = split_identification(
            labels, gallery_per_identity=gallery_per_identity, stranger_fraction=stranger_fraction, seed=seed
        )
        ident: IdentificationReport = identification_report(emb, labels, split, fpir=fpir)
        result["identification"] = {
            "root": str(identification_dir),
            "framing": identification_framing,
            "protocol": f"per enrolled identity the first {gallery_per_identity} image(s) (sorted file names) "
            f"in the gallery, the rest mated probes; {stranger_fraction:.0%} of identities (seed {seed}) "
            "are strangers whose images are non-mated probes",
            **ident.as_dict(),
            "summary": ident.summary(),
        }
    return result


def _with_flip(model: Path, tmp: Path, flip: bool | None) -> Path:
    """``model`` itself, or a copy in ``tmp`` whose card sets mirror-image augmentation to ``flip``."""
    if Path(model).suffix.lower() in ONNX_SUFFIXES:
        proto = load_onnx_model(model)
        card = read_onnx_card(proto, str(model)) or foreign_card(proto, str(model))
    else:
        card = load_checkpoint(model)[1]
    if flip is None or card.input.flip == flip:
        return model
    changed = card.model_copy(update={"input": card.input.model_copy(update={"flip": flip})})
    copy = tmp / model.name
    if model.suffix.lower() in ONNX_SUFFIXES:
        write_onnx_card(proto, changed, copy)
    else:
        replace_card(model, copy, changed)
    return copy


def calibrate_model(
    model: Path,
    pairs_file: Path,
    *,
    images_dir: Path | None = None,
    folds: Sequence[int] | None = None,
    fars: Sequence[float] = DEFAULT_FARS,
    default_far: float | None = None,
    impostors: str = "all",
    framing: str = "lfw",
    out: Path | None = None,
    device: str | None = None,
    progress: bool = False,
    flip: bool | None = None,
) -> ModelCard:
    """Measure thresholds at `fars` and write them into the model's card (`out`, default: in place).

    `flip` (None: as the card says) switches mirror-image test-time augmentation (`InputSpec.flip`) on or off in
    the card first, so the thresholds are measured the way the model will be served.

    Genuine scores: the same-person pairs of the chosen folds. Impostor scores: `impostors="all"`,
    every cross-identity pair among the images of those folds (many more than the listed pairs, so
    small FARs are measurable); `"pairs"`, only the listed different-person pairs.
    The default threshold is the one at `default_far` (default: the strictest FAR).

    Weights are untouched, so the card version stays the same (`.pt`: recomputed from the weights by
    `save_checkpoint`; `.onnx`: the graph hash or the exported `.pt` version); the file checksum changes.
    """
    if impostors not in ("all", "pairs"):
        raise ValueError(f"impostors must be 'all' or 'pairs', got {impostors!r}")
    target = Path(out) if out is not None else Path(model)
    if target.suffix.lower() != Path(model).suffix.lower():
        raise ValueError(f"--out must have the same file type as the model ({Path(model).suffix})")
    pairs = select_folds(read_pairs(pairs_file, images_dir), folds)
    with tempfile.TemporaryDirectory() as tmp:
        measured = _with_flip(Path(model), Path(tmp), flip)
        embedder = load_embedder(measured, device=device, allow_uncalibrated=True)
        embedder.load()
        scores, same, fold_ids, emb, paths = verification_scores(embedder, pairs, framing, progress=progress)
    if impostors == "all":
        _, impostor_scores = cross_scores(emb, [p.parent.name for p in paths])
        pool = f"all cross-identity pairs among the {len(paths)} images of the chosen pairs ({impostor_scores.size})"
    else:
        impostor_scores = scores[~same]
        pool = f"the {impostor_scores.size} different-person pairs listed"
    calibration: Calibration = calibrate_thresholds(scores[same], impostor_scores, fars, default_far=default_far)
    default_label = next(k for k in calibration.thresholds if float(k) == calibration.default_far)
    default_row = calibration.per_far[default_label]
    record = {
        "pairs_file": str(pairs_file),
        "folds": sorted({int(f) for f in fold_ids}),
        "framing": framing,
        "genuine": f"the {calibration.n_genuine} same-person pairs",
        "impostors": pool,
        "per_far": calibration.per_far,
        "default": {"far_target": calibration.default_far, **default_row},
    }
    card = embedder.card
    note = (
        f"Default threshold {default_row['threshold']:.4f} at target FAR {default_label} (measured FAR "
        f"{default_row['far']:.2e} on {pool}; TAR {default_row['tar']:.3f}), calibrated on {pairs_file.name} "
        f"folds {record['folds']}."
    )
    base_notes = card.notes.replace("UNCALIBRATED: run `facedb calibrate` before serving this model.", "").strip()
    updated = ModelCard.model_validate(
        {
            **card.model_dump(mode="json"),
            "metrics": {**card.metrics, "calibration": record},
            "thresholds": calibration.thresholds,
            "default_threshold": calibration.thresholds[default_label],
            "default_threshold_far": calibration.default_far,
            "notes": f"{base_notes} {note}".strip() if not base_notes.startswith("UNCALIBRATED") else note,
        }
    )
    if Path(model).suffix.lower() in ONNX_SUFFIXES:
        proto = load_onnx_model(Path(model))
        original = read_onnx_card(proto, str(model)) or foreign_card(proto, str(model))
        updated = updated.model_copy(update={"version": original.version})
        write_onnx_card(proto, updated, target)
    else:
        updated = replace_card(Path(model), target, updated)
    return updated


def lfw_fold_exclusions(pairs_file: Path, folds: Sequence[int]) -> frozenset[str]:
    """Identity names of `folds` in an LFW pairs file (never to be trained on)."""
    pairs = read_pairs(pairs_file)
    present = {p.fold for p in pairs}
    missing = sorted(set(folds) - present)
    if missing:
        raise ValueError(f"{pairs_file}: no folds {missing} (it has {sorted(present)})")
    return frozenset(pair_identities(pairs, folds))


def _parse_params(items: Sequence[str], what: str) -> dict[str, Any]:
    """["s=64", "m=0.5", "widths=[32,64]"] -> {"s": 64, "m": 0.5, "widths": [32, 64]} (JSON values, else text)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} must be KEY=VALUE, got {item!r}")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


# ------------------------------------------------------------------------------------------- commands


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


@contextmanager
def _clean_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line on stderr instead of a traceback."""
    try:
        yield
    except (ModelLoadError, TrainingError, ImageError) as exc:
        raise _fail(str(exc)) from None
    except (ValueError, KeyError) as exc:
        raise _fail(str(exc).strip("'\"")) from None
    except OSError as exc:
        raise _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None


def _check_framing(name: str) -> str:
    if name not in FRAMING_NAMES:
        raise typer.BadParameter(f"unknown framing {name!r}; known: {sorted(FRAMING_NAMES)}")
    return name


def train_command(
    data: Annotated[
        list[str],
        typer.Option(
            "--data",
            help="Training set PATH[:FRAMING] (one folder per identity); repeatable. "
            "FRAMING none|lfw|yaleb (fixed crops) or detect (detect + align, the serving path), guessed from "
            "the path when omitted.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write (.pt).")],
    backbone: Annotated[str, typer.Option(help="Registered backbone name.")] = "compact_iresnet",
    backbone_param: Annotated[list[str] | None, typer.Option(help="Backbone KEY=VALUE (JSON value).")] = None,
    head: Annotated[str, typer.Option(help="Head: softmax, sphereface, cosface, arcface, combined.")] = "cosface",
    head_param: Annotated[list[str] | None, typer.Option(help="Head KEY=VALUE, e.g. s=64 m=0.5.")] = None,
    height: Annotated[int, typer.Option(help="Input height.")] = 64,
    width: Annotated[int, typer.Option(help="Input width.")] = 52,
    channels: Annotated[int, typer.Option(help="1 (grey) or 3 (RGB).")] = 1,
    embedding_dim: Annotated[int | None, typer.Option(help="Embedding size (backbone default if unset).")] = None,
    face_template: Annotated[
        str | None, typer.Option(help="Aligned crop for framing 'detect': arcface_112 or head_92x112.")
    ] = None,
    distill: Annotated[
        str | None, typer.Option(help="Distil from a teacher beside the margin head: dlib (needs framing detect).")
    ] = None,
    distill_weight: Annotated[float, typer.Option(help="Weight of the distillation loss.")] = 20.0,
    distill_center: Annotated[
        bool, typer.Option(help="Centre the teacher's embeddings on their training-set mean.")
    ] = True,
    workers: Annotated[int, typer.Option(help="Processes for detection/alignment of framing 'detect'.")] = 2,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128,
    optimizer: Annotated[str, typer.Option(help="sgd (Nesterov) or adam.")] = "sgd",
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 0.1,
    weight_decay: Annotated[float, typer.Option(help="Weight decay (weights only).")] = 5e-4,
    warmup_epochs: Annotated[float, typer.Option(help="Linear warm-up epochs.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N (default: cuda if available).")] = None,
    amp: Annotated[bool, typer.Option(help="float16 autocast on CUDA.")] = True,
    augment: Annotated[bool, typer.Option(help="Random augmentation.")] = True,
    min_images: Annotated[int, typer.Option(help="Skip identities with fewer images.")] = 2,
    max_images: Annotated[int, typer.Option(help="Debug: subsample to this many images (0 = all).")] = 0,
    exclude_lfw_folds: Annotated[
        str | None, typer.Option(help="Never train on identities of these LFW folds, e.g. 7,8,9.")
    ] = None,
    lfw_pairs: Annotated[
        Path | None,
        typer.Option(help="pairs.txt for --exclude-lfw-folds (default: lfw/pairs.txt beside an lfw --data)."),
    ] = None,
    exclude_identities: Annotated[
        Path | None, typer.Option(help="File with identity folder names to leave out, one per line.")
    ] = None,
    calibrate_pairs: Annotated[
        Path | None,
        typer.Option(
            help="Calibrate on these pairs after training (default: the excluded LFW folds). Images are framed "
            "like the --data set in images/ beside the pairs file, else with the LFW framing."
        ),
    ] = None,
    far: Annotated[list[float] | None, typer.Option(help="Target FARs for calibration; repeatable.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache preprocessed inputs here.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT.state if present.")] = False,
    name: Annotated[str, typer.Option(help="Model name in the card.")] = "facedb-model",
) -> None:
    """Train an embedder with a margin head; write one model file (weights + card)."""
    with _clean_errors():
        specs = tuple(DatasetSpec.parse(item) for item in data)
        excluded: set[str] = set()
        rules: list[str] = []
        held_folds: list[int] = []
        pairs_path = lfw_pairs
        if exclude_lfw_folds:
            held_folds = parse_folds(exclude_lfw_folds)
            if pairs_path is None:
                candidates = [s.root.parent / "pairs.txt" for s in specs if s.framing in ("lfw", DETECT)]
                pairs_path = next((c for c in candidates if c.exists()), None)
                if pairs_path is None:
                    raise ValueError("--exclude-lfw-folds needs --lfw-pairs (no lfw/pairs.txt beside the --data sets)")
            excluded |= lfw_fold_exclusions(pairs_path, held_folds)
            rules.append(f"identities of folds {held_folds} of {pairs_path}")
        if exclude_identities is not None:
            names = {line.strip() for line in exclude_identities.read_text().splitlines() if line.strip()}
            excluded |= names
            rules.append(f"{len(names)} identities listed in {exclude_identities}")
        if channels not in (1, 3):
            raise ValueError(f"--channels must be 1 or 3, got {channels}")
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"--optimizer must be sgd or adam, got {optimizer!r}")
        templates: dict[str | None, FaceTemplateName | None] = {None: None}
        templates |= {name: name for name in get_args(FaceTemplateName)}
        if face_template not in templates:
            known = ", ".join(t for t in templates if t)
            raise ValueError(f"--face-template must be one of {known}, got {face_template!r}")
        if distill not in (None, "dlib"):
            raise ValueError(f"--distill must be dlib, got {distill!r}")
        config = TrainConfig(
            data=specs,
            out=out,
            name=name,
            backbone=backbone,
            backbone_params=_parse_params(backbone_param or [], "--backbone-param"),
            head=head,
            head_params=_parse_params(head_param or [], "--head-param"),
            height=height,
            width=width,
            channels=1 if channels == 1 else 3,
            embedding_dim=embedding_dim,
            face_template=templates[face_template],
            distill="dlib" if distill == "dlib" else None,
            distill_weight=distill_weight,
            distill_center=distill_center,
            workers=workers,
            epochs=epochs,
            batch_size=batch_size,
            optimizer="sgd" if optimizer == "sgd" else "adam",
            lr=lr,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            seed=seed,
            threads=threads,
            device=device,
            amp=amp,
            exclude_identities=frozenset(excluded),
            exclude_rule="; ".join(rules),
            min_images=min_images,
            max_images=max_images,
            augment=AugmentConfig(enabled=augment),
            cache_dir=cache_dir,
            resume=resume,
        )
        result = train(config)
        typer.echo(f"wrote {result.path} (version {result.card.version}), {result.train_seconds / 60:.1f} min")
        cal_pairs = calibrate_pairs or (pairs_path if held_folds else None)
        if cal_pairs is not None:
            folds = held_folds if calibrate_pairs is None else None
            images_root = (cal_pairs.parent / "images").resolve()
            framing = next((s.framing for s in specs if s.root.resolve() == images_root), "lfw")
            card = calibrate_model(result.path, cal_pairs, folds=folds, fars=far or DEFAULT_FARS, framing=framing)
            report = evaluate_model(result.path, pairs_file=cal_pairs, folds=folds, pairs_framing=framing)
            weights, stored = load_checkpoint(result.path)
            final = stored.model_copy(update={"metrics": {**stored.metrics, "verification": report["verification"]}})
            save_checkpoint(result.path, model=weights, card=final)
            typer.echo(f"verification: {report['verification']['summary']}")
            typer.echo(
                f"thresholds {card.thresholds}; default {card.default_threshold} (FAR {card.default_threshold_far:g})"
            )
        else:
            typer.echo(
                "not calibrated (no --calibrate-pairs or --exclude-lfw-folds): run `facedb calibrate` before serving"
            )


def evaluate_command(
    model: Annotated[Path, typer.Argument(help="Model file (.pt or .onnx).")],
    pairs: Annotated[Path | None, typer.Option(help="LFW-format pairs file (verification).")] = None,
    images: Annotated[Path | None, typer.Option(help="Image folder for --pairs (default: images/ beside it).")] = None,
    folds: Annotated[str | None, typer.Option(help="Only these folds, e.g. 7,8,9.")] = None,
    framing: Annotated[str, typer.Option(help="Framing of the pair images: none|lfw|yaleb|detect.")] = "lfw",
    roc_png: Annotated[Path | None, typer.Option(help="Write the ROC curve as PNG.")] = None,
    identification: Annotated[Path | None, typer.Option(help="One-folder-per-identity set for identification.")] = None,
    identification_framing: Annotated[str, typer.Option(help="Framing of the identification images.")] = "none",
    gallery_per_identity: Annotated[int, typer.Option(help="Gallery images per enrolled identity.")] = 1,
    strangers: Annotated[float, typer.Option(help="Fraction of identities held out as strangers.")] = 0.25,
    fpir: Annotated[float, typer.Option(help="FPIR for the open-set FNIR.")] = 1e-2,
    seed: Annotated[int, typer.Option(help="Seed of the stranger choice.")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu or cuda.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write all results as JSON.")] = None,
) -> None:
    """Verification (k-fold accuracy, AUC, EER, TAR@FAR, ROC plot) and open-set identification."""
    with _clean_errors():
        result = evaluate_model(
            model,
            pairs_file=pairs,
            images_dir=images,
            folds=parse_folds(folds) if folds else None,
            pairs_framing=_check_framing(framing),
            identification_dir=identification,
            identification_framing=_check_framing(identification_framing),
            gallery_per_identity=gallery_per_identity,
            stranger_fraction=strangers,
            fpir=fpir,
            seed=seed,
            roc_png=roc_png,
            device=device,
            progress=True,
        )
        typer.echo(f"model {result['model']['name']}@{result['model']['version']}")
        for key in ("verification", "identification"):
            if key in result:
                typer.echo(f"{key}: {result[key]['summary']}")
        if json_out is not None:
            json_out.write_text(json.dumps(result, indent=2))
            typer.echo(f"wrote {json_out}")


def calibrate_command(
    model: Annotated[Path, typer.Argument(help="Model file (.pt or .onnx).")],
    pairs: Annotated[Path, typer.Option(help="LFW-format pairs file.")],
    far: Annotated[list[float] | None, typer.Option(help="Target FAR; repeatable (default 1e-1, 1e-2, 1e-3).")] = None,
    default_far: Annotated[
        float | None, typer.Option(help="FAR of the default threshold (default: strictest).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write here instead of updating MODEL in place.")] = None,
    images: Annotated[Path | None, typer.Option(help="Image folder for --pairs.")] = None,
    folds: Annotated[str | None, typer.Option(help="Only these folds, e.g. 7,8,9.")] = None,
    impostors: Annotated[str, typer.Option(help="all (cross-identity pairs of the images) or pairs.")] = "all",
    framing: Annotated[str, typer.Option(help="Framing of the pair images: none|lfw|yaleb|detect.")] = "lfw",
    device: Annotated[str | None, typer.Option(help="cpu or cuda.")] = None,
    flip: Annotated[
        bool | None, typer.Option("--flip/--no-flip", help="Set mirror-image test-time augmentation in the card.")
    ] = None,
) -> None:
    """Measure thresholds at target FARs and write them (and the default threshold) into the card."""
    with _clean_errors():
        card = calibrate_model(
            model,
            pairs,
            images_dir=images,
            folds=parse_folds(folds) if folds else None,
            fars=far or list(DEFAULT_FARS),
            default_far=default_far,
            impostors=impostors,
            framing=_check_framing(framing),
            out=out,
            device=device,
            progress=True,
            flip=flip,
        )
        for label, row in card.metrics["calibration"]["per_far"].items():
            typer.echo(
                f"FAR {label}: threshold {row['threshold']:.4f} (measured FAR {row['far']:.2e}, TAR {row['tar']:.4f})"
            )
        typer.echo(
            f"default threshold {card.default_threshold:.4f} (FAR {card.default_threshold_far:g}); "
            f"wrote {out or model} (version {card.version})"
        )


def export_onnx_command(
    model: Annotated[Path, typer.Argument(help="facedb model file (.pt).")],
    out: Annotated[Path, typer.Argument(help="ONNX file to write.")],
) -> None:
    """Export a facedb model to ONNX (dynamic batch) with its card in the ONNX metadata."""
    with _clean_errors():
        if out.suffix.lower() not in ONNX_SUFFIXES:
            raise ValueError(f"output must end in .onnx, got {out.name}")
        card = export_onnx(model, out)
        typer.echo(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {card.name}@{card.version})")


def import_dlib_command(
    out: Annotated[Path, typer.Argument(help="facedb model file (.pt) to write.")],
    source: Annotated[
        Path | None, typer.Option(help="dlib's network file (default: the one face_recognition_models installs).")
    ] = None,
    float32: Annotated[bool, typer.Option("--float32", help="Store float32 weights (default float16).")] = False,
) -> None:
    """Convert dlib's face recognition ResNet (CC0) into a facedb model; calibrate it before serving."""
    from embedding.train.dlib_import import import_dlib_model  # noqa: PLC0415 - only this command needs it

    with _clean_errors():
        if out.suffix.lower() != ".pt":
            raise ValueError(f"output must end in .pt, got {out.name}")
        card = import_dlib_model(out, source=source, half=not float32)
        size_mb = out.stat().st_size / 1e6
        typer.echo(f"wrote {out} ({size_mb:.1f} MB, {card.name}@{card.version}); next: facedb calibrate")


def register(app: typer.Typer) -> None:
    """Add the commands train, evaluate, calibrate, export-onnx and import-dlib to `app`."""
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("calibrate")(calibrate_command)
    app.command("import-dlib")(import_dlib_command)
    app.command("export-onnx")(export_onnx_command)
