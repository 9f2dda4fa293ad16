"""Reproduce the roots: the Siamese-network articles on AT&T, next to a margin-head model.

Two splits of the AT&T faces (40 subjects x 10 images): the articles' "train s1-s37, test s38-s40"
and a harder "train s1-s20, test s21-s40". Per split:

1. **Siamese** (`siamese_att`: 3 reflection-padded conv layers 4-8-8 + FC 500-500-5), contrastive
   loss (margin 2.0, label 0 = same), Adam lr 5e-4, batch 64, 100x100 grey stretched, pixels in
   [0, 1], no augmentation; pairs drawn as in the articles (for each image, a random partner, same
   person with probability 1/2), `--siamese-epochs` passes over the training images.
2. **Margin head**: `compact_iresnet` (64x52 grey, the default model's input) + ArcFace (s=30, m=0.5)
   trained by `embedding.training.train` (the `facedb train` engine; augmentation on) with the test
   subjects excluded, then embedded through the saved file and `TorchEmbedder` (the serving path).
3. The shipped default model (never trained on AT&T) as a reference.

Verification on *all* same/different pairs of the test subjects' images: ROC AUC, and accuracy with
the threshold chosen by 10-fold cross-validation over the pairs (pairs assigned to folds at random,
seeded; the folds share images) and, separately, with the threshold chosen on all pairs of the
training subjects. Scores: negative Euclidean distance for the Siamese net (as in the articles) and
cosine of L2-normalised embeddings for all models (what the service does).

    python -m benchmarks.roots                      # both splits, ~20 min on 2 busy cores
    python -m benchmarks.roots --quick              # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedding.backbones import build_backbone
from embedding.card import InputSpec
from embedding.data import AugmentConfig, DatasetSpec, read_rgb
from embedding.embedder import TorchEmbedder, compact_model_path
from embedding.evaluation import best_threshold, foldwise_accuracy, roc_auc
from embedding.losses import ContrastiveLoss
from embedding.preprocess import to_model_input
from embedding.training import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("FACEDB_DATA_ROOT", REPO.parent / "shared" / "data"))
SIAMESE_SPEC = InputSpec(height=100, width=100, channels=1, mean=0.0, std=1.0, resize="stretch")
SPLITS = {"s1-s37 / s38-s40": (range(1, 38), range(38, 41)), "s1-s20 / s21-s40": (range(1, 21), range(21, 41))}


def load_att(root: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """All 400 AT&T images (decoded RGB) and their subject numbers 1..40."""
    images, labels = [], []
    for subject in range(1, 41):
        for index in range(1, 11):
            images.append(read_rgb(root / f"s{subject}" / f"{index}.pgm"))
            labels.append(subject)
    return images, np.array(labels)


def all_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (i, j) of all unordered pairs i < j of n items."""
    i, j = np.triu_indices(n, k=1)
    return i, j


def verification(
    scores: np.ndarray, same: np.ndarray, train_scores: np.ndarray, train_same: np.ndarray, seed: int
) -> dict[str, Any]:
    """AUC, 10-fold accuracy (random pair folds) and accuracy at the train-split threshold."""
    folds = np.random.default_rng(seed).permutation(len(scores)) % 10
    accs = foldwise_accuracy(scores, same, folds)
    threshold = best_threshold(train_scores, train_same)
    return {
        "auc": roc_auc(scores, same),
        "acc_10fold": float(np.mean(accs)),
        "acc_10fold_std": float(np.std(accs)),
        "acc_train_threshold": float(np.mean((scores >= threshold) == same)),
        "pairs": len(scores),
        "same_pairs": int(same.sum()),
    }


def score_sets(emb: np.ndarray, labels: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Scores of all pairs: "cosine" of normalised rows or "neg_euclidean" of raw rows."""
    i, j = all_pairs(len(labels))
    if how == "cosine":
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        scores = np.einsum("nd,nd->n", unit[i], unit[j])
    else:
        scores = -np.linalg.norm(emb[i] - emb[j], axis=1)
    return scores.astype(np.float64), labels[i] == labels[j]


def train_siamese(x: torch.Tensor, y: np.ndarray, epochs: int, seed: int) -> tuple[torch.nn.Module, float, float]:
    """The articles' training loop. Returns (model, final epoch loss, seconds)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_backbone("siamese_att")
    loss_fn = ContrastiveLoss(margin=2.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    by_label = {label: np.flatnonzero(y == label) for label in np.unique(y)}
    start = time.time()
    last = 0.0
    for _ in range(epochs):
        model.train()
        first = rng.permutation(len(y))
        same = rng.random(len(y)) < 0.5
        second = np.array(
            [
                rng.choice(by_label[y[a]]) if s else rng.choice(np.flatnonzero(y != y[a]))
                for a, s in zip(first, same, strict=True)
            ]
        )
        total = 0.0
        for b in range(0, len(first), 64):
            a_idx, b_idx = first[b : b + 64], second[b : b + 64]
            label = torch.from_numpy((y[a_idx] != y[b_idx]).astype(np.float32))  # 0 = same
            out_a, out_b = model(x[a_idx]), model(x[b_idx])
            loss = loss_fn(out_a, out_b, label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(a_idx)
        last = total / len(first)
    model.eval()
    return model, last, time.time() - start


@torch.inference_mode()
def embed(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Raw (unnormalised) embeddings of float32 (N, C, H, W) inputs."""
    return torch.cat([model(x[i : i + 128]) for i in range(0, len(x), 128)]).numpy()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both splits; returns the results table rows."""
    att = DATA_ROOT / "att_faces"
    if not att.exists():
        raise SystemExit(f"face data not found at {att} (set FACEDB_DATA_ROOT)")
    torch.set_num_threads(args.threads)
    images, labels = load_att(att)
    siamese_x = torch.from_numpy(to_model_input(images, SIAMESE_SPEC))
    default = TorchEmbedder(compact_model_path(), device="cpu")
    default_emb = default.embed(images)
    rows: list[dict[str, Any]] = []
    for split_name, (train_subjects, test_subjects) in SPLITS.items():
        if args.quick and split_name != next(iter(SPLITS)):
            continue
        tr = np.isin(labels, list(train_subjects))
        te = np.isin(labels, list(test_subjects))

        def evaluate(emb: np.ndarray, how: str, tr: np.ndarray = tr, te: np.ndarray = te) -> dict[str, Any]:
            scores, same = score_sets(emb[te], labels[te], how)
            train_scores, train_same = score_sets(emb[tr], labels[tr], how)
            return verification(scores, same, train_scores, train_same, args.seed)

        # 1. Siamese + contrastive.
        model, loss, seconds = train_siamese(siamese_x[tr], labels[tr], args.siamese_epochs, args.seed)
        emb = embed(model, siamese_x)
        for how in ("neg_euclidean", "cosine"):
            rows.append(
                {
                    "split": split_name,
                    "model": "siamese_att + contrastive (m=2.0)",
                    "score": how,
                    "train_seconds": round(seconds, 1),
                    "final_loss": round(loss, 4),
                    **evaluate(emb, how),
                }
            )
        print(f"[{split_name}] siamese {seconds:.0f} s, loss {loss:.4f}: {rows[-2]}", flush=True)

        # 2. Margin head through the facedb train engine, evaluated through the saved file.
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "arcface.pt"
            config = TrainConfig(
                data=(DatasetSpec(att, "none", "att_faces"),),
                out=out,
                name="roots-arcface",
                backbone="compact_iresnet",
                backbone_params={"widths": [32, 48, 96, 192], "blocks": [1, 2, 1], "dropout": 0.3},
                head="arcface",
                head_params={"s": 30.0, "m": 0.5},
                height=64,
                width=52,
                channels=1,
                embedding_dim=128,
                epochs=args.margin_epochs,
                batch_size=64,
                lr=0.1,
                warmup_epochs=2.0,
                seed=args.seed,
                exclude_identities=frozenset(f"s{s}" for s in test_subjects),
                exclude_rule=f"test subjects {split_name.split(' / ')[1]}",
                augment=AugmentConfig(),
                progress=False,
            )
            result = train(config)
            margin_emb = TorchEmbedder(out, device="cpu").embed(images)
        rows.append(
            {
                "split": split_name,
                "model": "compact_iresnet + ArcFace (s=30, m=0.5)",
                "score": "cosine",
                "train_seconds": round(result.train_seconds, 1),
                "final_loss": round(result.history[-1]["loss"], 4),
                **evaluate(margin_emb, "cosine"),
            }
        )
        print(f"[{split_name}] arcface {result.train_seconds:.0f} s: {rows[-1]}", flush=True)

        # 3. Shipped compact model (no AT&T in its training data), no training here.
        rows.append(
            {
                "split": split_name,
                "model": f"compact.pt ({default.card.version}, not trained on AT&T)",
                "score": "cosine",
                "train_seconds": 0.0,
                "final_loss": None,
                **evaluate(default_emb, "cosine"),
            }
        )
    return {"rows": rows, "args": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads()}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the result rows."""
    lines = [
        "| split (train / test) | model | score | train time | test pairs (same) | AUC "
        "| acc, 10-fold thr. | acc, train thr. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['split']} | {r['model']} | {r['score']} | {r['train_seconds']:.0f} s "
            f"| {r['pairs']} ({r['same_pairs']}) "
            f"| {r['auc']:.4f} | {r['acc_10fold']:.4f} ± {r['acc_10fold_std']:.4f} | {r['acc_train_threshold']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--siamese-epochs", type=int, default=20)
    parser.add_argument("--margin-epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="first split only, few epochs")
    parser.add_argument("--out", type=Path, default=None, help="write results JSON here")
    args = parser.parse_args()
    if args.quick:
        args.siamese_epochs, args.margin_epochs = 3, 3
    start = time.time()
    results = run(args)
    results["wall_seconds"] = round(time.time() - start, 1)
    print(table(results["rows"]))
    print(f"wall time {results['wall_seconds']:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
