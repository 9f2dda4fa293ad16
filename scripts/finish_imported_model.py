"""Finish an imported (not facedb-trained) model for shipping: measure it beside a baseline, render its card.

The shipped `embedding/models/dlib_resnet.pt` is dlib's ResNet read by `facedb import-dlib` and calibrated by
`facedb calibrate` (both commands are printed in its card). This script adds to the card, measured on the file
through the serving path (detect, align to the model's template, embed), with the baseline model measured in the
same run on the same data:

- LFW verification on every fold of `lfw/pairs.txt` (the model never saw an LFW identity) and on folds 7-9
  alone, the folds the baseline held out from its training;
- AT&T and CelebA-subset open-set identification (`facedb evaluate --identification`);
- CPU embedding throughput at batch 1, 8 and 32;

and renders `<model>.md` beside the model from the card alone. `--render-only` re-renders without measuring.

    python -m scripts.finish_imported_model embedding/models/dlib_resnet.pt --baseline embedding/models/compact.pt
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedding.card import ModelCard
from embedding.checkpoint import load_checkpoint, replace_card
from embedding.embedder import load_embedder
from embedding.train.cli import evaluate_model, select_folds, verification_scores
from embedding.train.data import read_pairs
from embedding.train.evaluation import verification_report
from scripts.finish_trained_model import embed_speed

REPO = Path(__file__).resolve().parent.parent
BASELINE_HELD_OUT = (7, 8, 9)


def lfw(model: Path, pairs_file: Path, folds: Sequence[int] | None) -> dict[str, Any]:
    """k-fold LFW verification through detection on `folds` (all when None), plus folds 7-9 alone."""
    embedder = load_embedder(model, allow_uncalibrated=True)
    pairs = select_folds(read_pairs(pairs_file), folds)
    scores, same, fold_ids, _, paths = verification_scores(embedder, pairs, "detect", progress=True)
    out: dict[str, Any] = {}
    for key, chosen in (("all", np.ones(len(scores), bool)), ("7_9", np.isin(fold_ids, BASELINE_HELD_OUT))):
        if chosen.any() and len(np.unique(fold_ids[chosen])) >= 2:
            report = verification_report(scores[chosen], same[chosen], fold_ids[chosen])
            out[key] = {**report.as_dict(), "images": len(paths), "summary": report.summary()}
    return out


def identification(model: Path, root: Path) -> dict[str, Any]:
    """Open-set identification through detection (one gallery image per identity, 25% strangers, seed 0)."""
    result: dict[str, Any] = evaluate_model(model, identification_dir=root, identification_framing="detect")
    return dict(result["identification"])


def measure(model: Path, baseline: Path, data: Path) -> ModelCard:
    """Add LFW, AT&T, CelebA and speed figures for the model and the baseline to the model's card."""
    _, card = load_checkpoint(model)
    if not card.thresholds:
        raise SystemExit(f"{model} is not calibrated: run `facedb calibrate` first")
    _, base_card = load_checkpoint(baseline)
    pairs = data / "lfw" / "pairs.txt"
    ours = lfw(model, pairs, None)
    theirs = lfw(baseline, pairs, BASELINE_HELD_OUT)
    metrics = {
        **card.metrics,
        "verification": ours["all"],
        "verification_folds_7_9": ours["7_9"],
        "att_identification": identification(model, data / "att_faces"),
        "celeba_identification": identification(model, data / "celeba_subset"),
        "embed_faces_per_s_cpu": {
            **embed_speed(model),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        },
        "baseline": {
            "model": f"{base_card.name}@{base_card.version} ({baseline.name})",
            "verification_folds_7_9": theirs["7_9"],
            "att_identification": identification(baseline, data / "att_faces"),
            "celeba_identification": identification(baseline, data / "celeba_subset"),
            "embed_faces_per_s_cpu": embed_speed(baseline),
        },
    }
    return replace_card(model, model, card.model_copy(update={"metrics": metrics}))


def render(card: ModelCard, path: Path) -> str:
    """The model card text (every number from the card)."""
    m, t, spec = card.metrics, card.training, card.input
    ver, ver79, cal, base = m["verification"], m["verification_folds_7_9"], m["calibration"], m["baseline"]
    att, celeba, speed = m["att_identification"], m["celeba_identification"], m["embed_faces_per_s_cpu"]
    far_rows = "\n".join(
        f"| {label} | {row['threshold']:.4f} | {row['far']:.2e} | {row['tar']:.4f} |"
        for label, row in cal["per_far"].items()
    )

    def tars(report: dict[str, Any]) -> str:
        return ", ".join(f"{k}: {v['tar']:.4f}" for k, v in report["tar_at_far"].items())

    def ident(report: dict[str, Any]) -> str:
        return f"rank-1 {report['rank1']:.4f}, rank-5 {report['rank5']:.4f}, FNIR {report['fnir_at_fpir']:.4f}"

    def acc(report: dict[str, Any]) -> str:
        return f"{report['accuracy_mean']:.4f} ± {report['accuracy_std']:.4f}, AUC {report['roc_auc']:.4f}"

    def fps(report: dict[str, Any]) -> str:
        return " / ".join(f"{report[f'batch_{b}']:.0f}" for b in (1, 8, 32))

    base79 = base["verification_folds_7_9"]
    rows = [
        ("measure", "this model", "baseline"),
        ("---", "---", "---"),
        (
            f"LFW verification, folds 7-9 ({ver79['n_pairs']} pairs; threshold per fold from the others)",
            acc(ver79),
            acc(base79),
        ),
        ("LFW folds 7-9, TAR at FAR", tars(ver79), tars(base79)),
        (
            f"AT&T identification (detect; {att['gallery_identities']} enrolled with 1 photo, "
            f"{att['stranger_identities']} strangers)",
            ident(att),
            ident(base["att_identification"]),
        ),
        (
            f"CelebA-subset identification (same protocol; {celeba['gallery_identities']} enrolled, "
            f"{celeba['stranger_identities']} strangers)",
            ident(celeba),
            ident(base["celeba_identification"]),
        ),
        (
            f"CPU faces/s, batch 1 / 8 / 32 ({speed['threads']} CPUs, {speed.get('runtime', 'TorchEmbedder')})",
            fps(speed),
            fps(base["embed_faces_per_s_cpu"]),
        ),
    ]
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    return f"""# Model card: `{path.name}`: {card.name} (version `{card.version}`)

The default face embedder of facedb until SFace (`sface.md`) replaced it; serve it with
`FACEDB_MODEL_PATH=embedding/models/dlib_resnet.pt`. It is **not
trained by facedb**: it is dlib's face recognition ResNet, read from dlib's own file and run by facedb's PyTorch
code. Everything below was measured on this file through facedb's serving path (detect, align, embed) and is
stored in its card (`facedb models list`, or `embedding.checkpoint.load_checkpoint`); this page is rendered from
the card by `scripts/finish_imported_model.py`.

## Where it comes from

{t["origin"]}

Made by two commands: `facedb import-dlib dlib_resnet.pt` (reads `{t["source_file"]}`, sha256
`{t["source_sha256"][:16]}...`; weights stored as {t["stored_dtype"]}), then `facedb calibrate dlib_resnet.pt --pairs
../shared/data/lfw/pairs.txt --framing detect --far 0.1 --far 0.01 --far 0.001 --far 0.0001 --default-far 0.001
--flip`.
`tests/test_dlib_import.py` checks that the PyTorch network reproduces dlib's `compute_face_descriptor` on dlib's
own face chips (cosine > 0.99999, float16 weights included).

## Architecture

`{card.arch}` (`embedding/backbones.py`, `DlibResNet`), {t["parameters"] / 1e6:.2f} M parameters, file
{path.stat().st_size / 1e6:.1f} MB: conv 7x7/2 (32) -> affine (a folded batch norm) -> ReLU -> max pool 3x3/2 ->
residual stages of 32 (3 blocks), 64 (4), 128 (3), 256 (3) and 256 (1) channels, each but the first opening with a
stride-2 block whose shortcut is a 2x2 average pool zero-padded to the new width -> global average pool ->
linear 256 -> {card.embedding_dim} without bias: 29 convolutions. The service L2-normalises the output; scores are
cosine similarities.

## Input

1. Face detection: YuNet (`embedding/yunet.py`); landmarks by dlib's public-domain 5-point predictor on the YuNet
   box mapped to dlib's HOG framing (`embedding/detect.py`, `DlibLandmarks`).
2. Alignment: one similarity transform of the 5 landmarks from the photo to the `{spec.face_template}` template:
   where dlib's own `get_face_chip` (5-point predictor, 150x150, padding 0.25) puts facedb's five landmarks,
   measured on 597 LFW faces (`scripts/derive_dlib_template.py`).
3. `InputSpec`: {spec.height}x{spec.width} RGB, `x / 255`; the network then applies dlib's input mapping
   `(255 x - channel mean) / 256` with dlib's means (122.782, 117.001, 104.298).
4. Mirror-image test-time augmentation (`flip: {str(spec.flip).lower()}`): the face and its mirror image are embedded
   together and the embedding is the normalised sum; twice the network's cost, chosen because it beat dlib's own
   pipeline at low FAR where the plain embedding did not (`benchmarks/fidelity.py`; LFW folds 1-9 and the CelebA
   subset, the same data the card reports, so the choice is not independent of these figures).

## Measured metrics (facedb's serving path, this machine)

Baseline in the same run: `{base["model"]}`, facedb's own CosFace + distillation model (trained on LFW outside
folds 7-9 and Extended Yale B).

{table}

FNIR is at FPIR {att["fpir"]:g} (the threshold that lets 1% of strangers through). The identification rows keep
every image, also those where no face was detected (aligned with fallback landmarks, as `facedb evaluate` does),
and enrol each identity's first photo whatever its quality; the README's CelebA run through the HTTP API (quality
gates on enrolment, probes without a face counted apart) is the service's own figure. All LFW folds 1-9
({ver["n_pairs"]} pairs, {ver["images"]} images): accuracy
{ver["accuracy_mean"]:.4f} ± {ver["accuracy_std"]:.4f}, AUC {ver["roc_auc"]:.4f}, EER {ver["eer"]:.4f}, TAR at FAR
{tars(ver)}. dlib's published LFW figure, with its own detector and alignment, is 99.38%. Speed machine:
{speed["machine"]}; preprocessing of aligned crops included (mirror images too), detection and decoding excluded.

## Thresholds (cosine similarity; accept when score ≥ threshold)

Calibrated on LFW folds {", ".join(str(f) for f in cal["folds"])} through detection: genuine = {cal["genuine"]};
impostors = {cal["impostors"]}.

| target FAR | threshold | measured FAR | TAR |
|---|---|---|---|
{far_rows}

**Default decision threshold: {card.default_threshold:.4f}, FAR {card.default_threshold_far:g}.** The service reads
it from this card (`FACEDB_THRESHOLD` overrides it). This model's cosine similarities are compressed towards 1
(dlib trained it on Euclidean distances of unnormalised vectors: two unrelated faces typically score about 0.8), so
its thresholds are high; compare scores only with this model's thresholds.

## Limitations and honesty notes

- facedb did not train this network and cannot audit its training data. Its author excluded LFW identities; the
  data are celebrity photos from the web, so CelebA identities may well be in it, and CelebA figures may be
  optimistic. AT&T and Yale A are unlikely to be.
- The thresholds are calibrated on the LFW folds the verification accuracy is reported on (the k-fold accuracy
  chooses each fold's threshold on the other folds). CelebA and AT&T give independent checks.
- Like any model trained on web photos of celebrities, expect lower accuracy for faces unlike that data: children,
  strong poses, low resolution, demographic groups the data under-represents.
- Embeddings of different model versions are not comparable; re-index (`facedb reindex`) to switch.

Data credits and terms: see `../shared/data/README.md`. The weights are CC0 (dlib / `face_recognition_models`).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Measure (unless --render-only) and write <model>.md beside the model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--baseline", type=Path, default=REPO / "embedding" / "models" / "compact.pt")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    card = load_checkpoint(args.model)[1] if args.render_only else measure(args.model, args.baseline, args.data)
    md = args.model.with_suffix(".md")
    md.write_text(render(card, args.model))
    for key in ("verification", "verification_folds_7_9", "att_identification", "celeba_identification"):
        print(f"{key}: {card.metrics[key]['summary']}")
    print(f"baseline: {card.metrics['baseline']}")
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
