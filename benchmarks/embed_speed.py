"""Embedding speed on this CPU: faces/s at batch 1, 8, 32, our models next to dlib's ResNet.

Series (all in one run, interleaved by batch size, same machine state):

- `dlib_resnet.pt` (dlib's ResNet in PyTorch) and `compact.pt` (facedb's own model): the shipped models through
  `TorchEmbedder` (preprocessing + forward + normalisation, from decoded uint8 RGB face crops; decoding excluded);
- `default.onnx`, `compact.onnx`: the same models exported with `export_onnx`, through `OnnxEmbedder`
  (onnxruntime CPU);
- `mobilefacenet`: the registered MobileFaceNet at 112x112 RGB (128-d, random weights: speed only),
  through `TorchEmbedder` and, exported, through `OnnxEmbedder`;
- `dlib resnet`: `dlib.face_recognition_model_v1` with the weights of `face_recognition_models`
  (`dlib_face_recognition_resnet_model_v1.dat`, 128-d), `compute_face_descriptor` on 150x150 RGB
  chips (batch 1: one chip per call; batch 8/32: one call with a list of chips).

Inputs: AT&T faces from ../shared/data (or FACEDB_DATA_ROOT), else synthetic images; chips for dlib
are the same faces resized to 150x150. Each series: `--warmup` untimed calls, then timed calls until
`--seconds` per batch size have passed (at least 3 calls); faces/s = faces / total time.

    python -m benchmarks.embed_speed [--threads 2] [--seconds 5] [--out embed_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dlib
import face_recognition_models
import numpy as np
import torch
from PIL import Image

from embedding.backbones import build_backbone
from embedding.card import InputSpec, ModelCard
from embedding.checkpoint import save_checkpoint
from embedding.embedder import compact_model_path, dlib_resnet_model_path
from embedding.onnx_embedder import OnnxEmbedder
from embedding.onnx_export import export_onnx
from embedding.torch_embedder import TorchEmbedder
from embedding.train.data import read_rgb

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("FACEDB_DATA_ROOT", REPO.parent / "shared" / "data"))
BATCHES = (1, 8, 32)


def faces(n: int) -> list[np.ndarray]:
    """n decoded RGB faces: AT&T images when available, else smooth random images of 112x92."""
    att = DATA_ROOT / "att_faces"
    if att.exists():
        paths = [att / f"s{s}" / f"{i}.pgm" for s in range(1, 41) for i in range(1, 11)]
        return [read_rgb(p) for p in paths[:n]]
    rng = np.random.default_rng(0)
    return [
        np.asarray(Image.fromarray(rng.integers(0, 256, (15, 12, 3), dtype=np.uint8)).resize((92, 112)))
        for _ in range(n)
    ]


def mobilefacenet_file(directory: Path) -> Path:
    """A MobileFaceNet model file (random weights) with a 112x112 RGB card."""
    params = {"in_channels": 3, "input_height": 112, "input_width": 112, "embedding_dim": 128}
    torch.manual_seed(0)
    model = build_backbone("mobilefacenet", **params).eval()
    card = ModelCard(
        name="mobilefacenet-speed",
        version="",
        arch="mobilefacenet",
        arch_params=params,
        embedding_dim=128,
        input=InputSpec(height=112, width=112, channels=3, mean=0.5, std=0.5),
        training={},
        metrics={},
        thresholds={"1e-3": 0.5},
        default_threshold=0.5,
        default_threshold_far=1e-3,
    )
    path = directory / "mobilefacenet.pt"
    save_checkpoint(path, model=model, card=card)
    return path


def measure(fn: Callable[[int], None], batch: int, seconds: float, warmup: int) -> float:
    """faces/s of fn(batch) over at least `seconds` (and 3 calls) after `warmup` calls."""
    for _ in range(warmup):
        fn(batch)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        fn(batch)
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-dlib", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pool = faces(64)
    chips = [
        np.ascontiguousarray(np.asarray(Image.fromarray(f).resize((150, 150), Image.Resampling.BILINEAR))) for f in pool
    ]
    series: dict[str, Callable[[int], None]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        mfn_path = mobilefacenet_file(tmp_dir)
        mfn = TorchEmbedder(mfn_path, device="cpu", batch_size=32)
        export_onnx(mfn_path, tmp_dir / "mobilefacenet.onnx")
        mfn_onnx = OnnxEmbedder(tmp_dir / "mobilefacenet.onnx", device="cpu", threads=args.threads)

        def runner(embedder: TorchEmbedder | OnnxEmbedder) -> Callable[[int], None]:
            def run(b: int) -> None:
                embedder.embed(pool[:b])

            return run

        for path in (dlib_resnet_model_path(), compact_model_path()):
            shipped = TorchEmbedder(path, device="cpu", batch_size=32)
            export_onnx(path, tmp_dir / f"{path.stem}.onnx")
            spec = shipped.card.input
            colour = "grey" if spec.channels == 1 else "RGB"
            series[f"{path.name} ({shipped.card.arch}, {spec.height}x{spec.width} {colour}), torch"] = runner(shipped)
            onnx = OnnxEmbedder(tmp_dir / f"{path.stem}.onnx", device="cpu", threads=args.threads)
            series[f"{path.stem}.onnx, onnxruntime"] = runner(onnx)
        series["mobilefacenet 112x112 RGB, torch"] = runner(mfn)
        series["mobilefacenet 112x112 RGB, onnxruntime"] = runner(mfn_onnx)
        dlib_version = None
        if not args.no_dlib:
            dlib_version = dlib.__version__
            net = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())

            def dlib_embed(b: int) -> None:
                if b == 1:
                    net.compute_face_descriptor(chips[0])
                else:
                    net.compute_face_descriptor(chips[:b])

            series["dlib resnet (150x150 RGB chips)"] = dlib_embed
        load_start = os.getloadavg()
        results: dict[str, dict[int, float]] = {name: {} for name in series}
        for batch in BATCHES:
            for name, fn in series.items():
                results[name][batch] = measure(fn, batch, args.seconds, args.warmup)
                print(f"{name:70s} batch {batch:2d}: {results[name][batch]:8.1f} faces/s", flush=True)
        load_end = os.getloadavg()
    print("\n| model | batch 1 | batch 8 | batch 32 |\n|---|---|---|---|")
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[b]:.0f}" for b in BATCHES) + " |")
    print(
        f"load average at start {load_start[0]:.2f}, end {load_end[0]:.2f}; {os.cpu_count()} CPUs; "
        f"torch {torch.__version__}, {args.threads} threads; dlib {dlib_version}"
    )
    if args.out:
        info: dict[str, Any] = {
            "results_faces_per_s": results,
            "threads": args.threads,
            "load_average": [load_start, load_end],
            "machine": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "dlib": dlib_version,
        }
        args.out.write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
