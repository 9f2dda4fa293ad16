"""Face data sets for training and evaluation: one-folder-per-identity sets, LFW pairs, framing, augmentation.

Moved here from `scripts/train_dev_model.py` (which trained the shipped default model) so that
`facedb train` / `facedb evaluate` prepare data exactly the same way:

- images are decoded with the service's decoder (`embedding.image.decode_image`), *framed* (either the
  serving path, "detect": detection and alignment, see `embedding.train.faceset`; or a fixed per-data-set crop,
  "lfw" / "yaleb", as the first interim model was trained), passed through
  `embedding.preprocess.to_model_input` and kept in memory as float32 (N, C, H, W), optionally cached
  in a `.npy` file keyed by the input spec, framing and file list;
- augmentation works on those normalised tensors (`augment`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from embedding.card import InputSpec
from embedding.image import decode_image
from embedding.preprocess import LUMA_WEIGHTS, to_model_input
from embedding.train.faceset import align_files

MAX_PIXELS: Final = 4096 * 4096
IMAGE_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pnm", ".gif", ".bmp", ".webp"})

# Data-set specific framing, standing in for face detection: every image is brought to the framing
# of the AT&T faces (whole head, eyes at ~47% of the height, eye-to-mouth ~31% of the height).
LFW_FACE_BOX: Final = (65, 42, 185, 188)
"""(left, top, right, bottom) crop of the 250x250 deep-funneled LFW images (120x146 px)."""
YALEB_SIZE: Final = (168, 192)
"""(width, height) of the cropped Extended Yale B images; other sizes (640x480 ambient shots) are skipped."""
YALEB_FRAME: Final = (184, 224, 0.68, 35, 73)
"""Yale B faces are cropped tighter than AT&T: (frame width, frame height, scale, left, top) — resize
by `scale` and place at (left, top) in a frame of AT&T proportions filled with the mean border grey."""

Framing = Callable[[np.ndarray], np.ndarray]
"""uint8 (H, W, 3) decoded image -> uint8 (H', W', 3) face crop."""


def read_rgb(path: Path) -> np.ndarray:
    """Decode a file with the service's decoder: uint8 (H, W, 3) RGB."""
    return decode_image(Path(path).read_bytes(), max_pixels=MAX_PIXELS)


def frame_none(rgb: np.ndarray) -> np.ndarray:
    """Identity framing (images are already face crops, e.g. AT&T, or aligned 112x112 chips)."""
    return rgb


def frame_lfw(rgb: np.ndarray) -> np.ndarray:
    """uint8 (250, 250, 3) deep-funneled LFW image -> uint8 (146, 120, 3) AT&T-like face crop."""
    if rgb.shape[:2] != (250, 250):
        raise ValueError(f"LFW framing expects 250x250 images, got {rgb.shape[1]}x{rgb.shape[0]}")
    left, top, right, bottom = LFW_FACE_BOX
    return np.ascontiguousarray(rgb[top:bottom, left:right])


def frame_yaleb(rgb: np.ndarray) -> np.ndarray:
    """uint8 (192, 168, 3) tight Yale B face -> uint8 (224, 184, 3) AT&T-like frame (constant padding)."""
    frame_w, frame_h, scale, left, top = YALEB_FRAME
    face = np.asarray(
        Image.fromarray(rgb).resize(
            (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), Image.Resampling.BILINEAR
        )
    )
    border = np.concatenate([face[0], face[-1], face[:, 0], face[:, -1]]).mean(axis=0)
    frame = np.empty((frame_h, frame_w, 3), dtype=np.uint8)
    frame[:] = np.rint(border).astype(np.uint8)
    frame[top : top + face.shape[0], left : left + face.shape[1]] = face
    return frame


FRAMINGS: Final[dict[str, Framing]] = {"none": frame_none, "lfw": frame_lfw, "yaleb": frame_yaleb}
"""Framing by name: "none" (whole image), "lfw" (deep-funneled LFW box), "yaleb" (Extended Yale B)."""

DETECT: Final = "detect"
"""Framing name of the serving path: detect, align to `CANONICAL`, cut the model's template
(`embedding.train.faceset.align_files`). It depends on the model's input spec, so it is not in `FRAMINGS`."""

FRAMING_NAMES: Final = (*FRAMINGS, DETECT)
"""Every framing a data set or evaluation may name."""


def guess_framing(root: Path) -> str:
    """Framing name for a data-set folder from its path: LFW -> "lfw", Extended Yale B -> "yaleb", else "none"."""
    parts = [p.lower() for p in Path(root).resolve().parts]
    if any(p.startswith("lfw") for p in parts[-2:]):
        return "lfw"
    if any("yale_b" in p or "yaleb" in p for p in parts[-2:]):
        return "yaleb"
    return "none"


# ---------------------------------------------------------------------------------- image folders


@dataclass(frozen=True)
class DatasetSpec:
    """One training/evaluation set in the one-folder-per-identity layout (`root/<identity>/<image>`)."""

    root: Path
    framing: str = "none"
    name: str = ""

    @staticmethod
    def parse(text: str) -> DatasetSpec:
        """`PATH` or `PATH:FRAMING` (framing guessed from the path when omitted); name = folder name."""
        head, sep, tail = text.rpartition(":")
        path_text, framing = (head, tail) if sep and tail in FRAMING_NAMES else (text, "")
        root = Path(path_text)
        framing = framing or guess_framing(root)
        name = root.parent.name if root.name == "images" else root.name
        return DatasetSpec(root=root, framing=framing, name=name)


@dataclass(frozen=True)
class LabelledImage:
    """One image of a labelled set: its file, identity (folder name) and data-set name."""

    path: Path
    identity: str
    dataset: str

    @property
    def label(self) -> str:
        """Class name unique across data sets: "<dataset>/<identity>"."""
        return f"{self.dataset}/{self.identity}"


def list_identity_folder(spec: DatasetSpec) -> list[LabelledImage]:
    """Every image file of `spec.root/<identity>/`, sorted by identity then file name.

    Raises FileNotFoundError if the root is not a directory.
    """
    if not spec.root.is_dir():
        raise FileNotFoundError(f"data set folder not found: {spec.root}")
    images: list[LabelledImage] = []
    for person in sorted(p for p in spec.root.iterdir() if p.is_dir()):
        images.extend(
            LabelledImage(f, person.name, spec.name or spec.root.name)
            for f in sorted(person.iterdir())
            if f.suffix.lower() in IMAGE_SUFFIXES
        )
    return images


@dataclass
class Selection:
    """Images chosen for training, and what was left out and why (identity names)."""

    images: list[LabelledImage]
    excluded: list[str] = field(default_factory=list)
    too_few_images: list[str] = field(default_factory=list)
    wrong_size: int = 0


def select_images(
    images: Iterable[LabelledImage],
    *,
    exclude: set[str] | frozenset[str] = frozenset(),
    min_images: int = 1,
    framing: str = "none",
) -> Selection:
    """Drop excluded identities (by folder name), identities with < `min_images`, and for the "yaleb"
    framing the images that are not 168x192 (the 640x480 ambient shots)."""
    by_identity: dict[str, list[LabelledImage]] = {}
    for image in images:
        by_identity.setdefault(image.identity, []).append(image)
    selection = Selection(images=[])
    for identity, files in by_identity.items():
        if identity in exclude:
            selection.excluded.append(identity)
            continue
        if framing == "yaleb":
            kept = []
            for image in files:
                with Image.open(image.path) as img:
                    if img.size == YALEB_SIZE:
                        kept.append(image)
                    else:
                        selection.wrong_size += 1
        else:
            kept = files
        if len(kept) < min_images:
            selection.too_few_images.append(identity)
            continue
        selection.images.extend(kept)
    return selection


def prepare_inputs(
    paths: Sequence[Path],
    framings: Sequence[str] | str,
    spec: InputSpec,
    *,
    cache_dir: Path | None = None,
    desc: str = "images",
    progress: bool = True,
) -> np.ndarray:
    """Decode, frame and `to_model_input` every image once -> float32 (N, C, H, W).

    With `cache_dir`, the result is stored as `<desc>-<hash>.npy` keyed by spec, framing constants and
    the file list, and reused by later calls.
    """
    names = [framings] * len(paths) if isinstance(framings, str) else list(framings)
    if len(names) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(names)} framings")
    key_src = json.dumps(
        [spec.model_dump(mode="json"), LFW_FACE_BOX, YALEB_FRAME, [str(p) for p in paths], names]
    ).encode()
    cache = cache_dir / f"{desc}-{hashlib.sha256(key_src).hexdigest()[:16]}.npy" if cache_dir else None
    if cache is not None and cache.exists():
        return np.asarray(np.load(cache), dtype=np.float32)
    out = np.empty((len(paths), spec.channels, spec.height, spec.width), dtype=np.float32)
    for index, (path, framing) in enumerate(
        tqdm(list(zip(paths, names, strict=True)), desc=f"decode {desc}", leave=False, disable=not progress)
    ):
        out[index] = to_model_input([FRAMINGS[framing](read_rgb(path))], spec)[0]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npy")
        np.save(tmp, out)
        tmp.replace(cache)
    return out


def load_rgb_images(
    paths: Sequence[Path],
    framing: str = "none",
    *,
    spec: InputSpec | None = None,
    progress: bool = False,
) -> list[np.ndarray]:
    """Decode and frame images for an `Embedder`: list of uint8 (H, W, 3) RGB arrays.

    Framing "detect" needs the model's `spec` (its face template) and returns the aligned model crops.
    """
    if framing == DETECT:
        if spec is None:
            raise ValueError('framing "detect" needs the model\'s input spec')
        return list(align_files(paths, spec, desc="eval", progress=progress).crops)
    frame = FRAMINGS[framing]
    return [frame(read_rgb(p)) for p in tqdm(paths, desc="decode", leave=False, disable=not progress)]


# ------------------------------------------------------------------------------------- LFW pairs


@dataclass(frozen=True)
class Pair:
    """One verification pair: two image paths, same person or not, and its fold (1-based)."""

    a: Path
    b: Path
    same: bool
    fold: int


def read_pairs(pairs_file: Path, images_dir: Path | None = None) -> list[Pair]:
    """Parse an LFW pairs file.

    View 2 (`pairs.txt`): header `n_folds n`, then per fold n same-person lines `name i j` and n
    different-person lines `name1 i name2 j`. View 1 (`pairsDev*.txt`): header `n_same n_different`
    (or one count), all in fold 1. Images are `<images_dir>/<name>/<name>_<i:04d>.jpg`,
    `images_dir` defaulting to `images/` beside the pairs file.
    """
    pairs_file = Path(pairs_file)
    images_dir = Path(images_dir) if images_dir is not None else pairs_file.parent / "images"
    lines = pairs_file.read_text().split("\n")
    header = [int(v) for v in lines[0].split()]
    rows = [line.split() for line in lines[1:] if line.strip()]
    if len(header) == 2 and len(rows) == header[0] * 2 * header[1]:
        per_fold = 2 * header[1]
    elif len(rows) == sum(header):
        per_fold = len(rows)
    else:
        raise ValueError(f"{pairs_file}: header {header} does not match {len(rows)} pair lines")

    def image(name: str, number: str) -> Path:
        return images_dir / name / f"{name}_{int(number):04d}.jpg"

    pairs = []
    for index, row in enumerate(rows):
        fold = index // per_fold + 1
        if len(row) == 3:
            pairs.append(Pair(image(row[0], row[1]), image(row[0], row[2]), True, fold))
        elif len(row) == 4:
            pairs.append(Pair(image(row[0], row[1]), image(row[2], row[3]), False, fold))
        else:
            raise ValueError(f"{pairs_file}: line {index + 2} is not a pair: {' '.join(row)!r}")
    return pairs


def pair_identities(pairs: Iterable[Pair], folds: Iterable[int] | None = None) -> set[str]:
    """Identity (folder) names appearing in the pairs of `folds` (all folds when None)."""
    wanted = None if folds is None else set(folds)
    return {p.parent.name for pair in pairs if wanted is None or pair.fold in wanted for p in (pair.a, pair.b)}


def parse_folds(text: str) -> list[int]:
    """ "7,8,9" or "7-9" -> [7, 8, 9]; raises ValueError on anything else."""
    folds: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        if "-" in part:
            low, high = (int(v) for v in part.split("-", 1))
            folds.extend(range(low, high + 1))
        else:
            folds.append(int(part))
    if not folds:
        raise ValueError(f"no folds in {text!r}")
    return sorted(set(folds))


# ---------------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation applied to normalised training tensors (see `augment`)."""

    flip: float = 0.5
    scale: tuple[float, float] = (0.9, 1.1)
    rotation_deg: float = 10.0
    translate: float = 0.06
    blur_p: float = 0.2
    blur_scale: tuple[float, float] = (0.4, 0.8)
    gamma: float = 0.4
    contrast: tuple[float, float] = (0.6, 1.4)
    brightness: float = 0.15
    grey_p: float = 0.2
    enabled: bool = True

    def describe(self, channels: int) -> list[str]:
        """Human-readable list for the model card."""
        if not self.enabled:
            return ["none"]
        return [
            f"horizontal flip p={self.flip}",
            f"scale {self.scale[0]}-{self.scale[1]}, rotation +-{self.rotation_deg} deg, translation "
            f"+-{self.translate:.0%} (one affine warp, border padding)",
            f"downscale to {self.blur_scale[0]}-{self.blur_scale[1]} and back (blur) p={self.blur_p}",
            f"gamma exp(U(-{self.gamma}, {self.gamma})), contrast {self.contrast[0]}-{self.contrast[1]}, "
            f"brightness +-{self.brightness}",
            "greyscale input (channels=1) for every image" if channels == 1 else f"random greyscale p={self.grey_p}",
        ]


def augment(
    x: torch.Tensor, spec: InputSpec, gen: torch.Generator, config: AugmentConfig | None = None
) -> torch.Tensor:
    """Random flip, scale/rotate/translate, low-res blur, gamma/contrast/brightness, greyscale.

    float32 (N, C, H, W) normalised model input (CPU) -> same shape; works in the normalised space.
    """
    cfg = config or AugmentConfig()
    if not cfg.enabled or len(x) == 0:
        return x
    n, channels, height, width = x.shape

    def uniform(low: float, high: float, size: int = n) -> torch.Tensor:
        return low + (high - low) * torch.rand(size, generator=gen)

    # Geometry: output->input sampling matrix in pixel-isotropic form, converted to normalised coords.
    scale = torch.exp(uniform(math.log(cfg.scale[0]), math.log(cfg.scale[1])))
    angle = uniform(-cfg.rotation_deg, cfg.rotation_deg) * math.pi / 180.0
    flip = torch.where(torch.rand(n, generator=gen) < cfg.flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    aspect = height / width
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin * aspect
    theta[:, 1, 0] = sin * flip / aspect
    theta[:, 1, 1] = cos
    theta[:, 0, 2] = uniform(-2 * cfg.translate, 2 * cfg.translate)
    theta[:, 1, 2] = uniform(-2 * cfg.translate, 2 * cfg.translate)
    grid = F.affine_grid(theta, [n, channels, height, width], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # Low resolution / blur for a random part of the batch.
    blurred = torch.rand(n, generator=gen) < cfg.blur_p
    if bool(blurred.any()):
        factor = float(uniform(cfg.blur_scale[0], cfg.blur_scale[1], 1))
        small = F.interpolate(x[blurred], scale_factor=factor, mode="bilinear", antialias=True)
        x[blurred] = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)

    # Photometric, in [0, 1] pixel units.
    pixels = (x * spec.std + spec.mean).clamp(0.0, 1.0)
    if channels == 3:
        grey = torch.rand(n, generator=gen) < cfg.grey_p
        luma = (pixels * torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)
        pixels = torch.where(grey.view(n, 1, 1, 1), luma.expand_as(pixels), pixels)
    gamma = torch.exp(uniform(-cfg.gamma, cfg.gamma)).view(n, 1, 1, 1)
    pixels = pixels.clamp_min(1e-6) ** gamma
    contrast = uniform(cfg.contrast[0], cfg.contrast[1]).view(n, 1, 1, 1)
    brightness = uniform(-cfg.brightness, cfg.brightness).view(n, 1, 1, 1)
    mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
    pixels = ((pixels - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
    return (pixels - spec.mean) / spec.std
