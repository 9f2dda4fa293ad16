"""Data sets through the serving path: detect, align, cut the model's template (`embedding.facepath`).

`align_files` gives training and evaluation exactly the crops the service embeds (the default detector and
landmarks, `embedding.facepath.model_face`), optionally with the distillation teacher's embedding of each face
(`embedding.train.teacher.DlibTeacher`, on the same detection). Work is spread over processes (dlib releases no
GIL), and the result can be cached as one `.npz` keyed by the input spec, detector, teacher and file list.

Which face: the one whose box centre is nearest the image centre (the labelled person of LFW and CelebA
photos is the central one). Images where the detector finds none (mostly Extended Yale B's darkest shots) are
aligned with fallback landmarks: the median landmarks, relative to the image size, of the detected faces of
same-sized images in the same call. That suits the pre-aligned sets it is used on (deep-funneled LFW, cropped
Yale B). `AlignedSet.detected` says which images these were; they get no teacher embedding (zeros).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from tqdm import tqdm

from embedding.align import ARCFACE_112, template_for_spec
from embedding.card import InputSpec
from embedding.detect import DetectedFace
from embedding.facepath import build_detector, landmarks_for, model_face
from embedding.image import decode_image
from embedding.train.teacher import TEACHER_DIM, DlibTeacher

_CACHE_VERSION: Final = 2
_MAX_PIXELS: Final = 4096 * 4096
_CHUNK: Final = 128


@dataclass
class AlignedSet:
    """Aligned faces of a list of image files, in file order.

    Attributes:
        crops: uint8 (N, h, w, 3) RGB model crops (the template's size, e.g. 112x112 for "arcface_112").
        detected: bool (N,): True where the detector found the face, False where fallback landmarks were used.
        teacher: float32 (N, 128) unit teacher embeddings (zero rows where not detected), or None when not
            asked for.
    """

    crops: np.ndarray
    detected: np.ndarray
    teacher: np.ndarray | None

    def __len__(self) -> int:
        return len(self.crops)


def central_face(
    faces: Sequence[DetectedFace], height: int, width: int, *, min_width_ratio: float = 0.0
) -> DetectedFace | None:
    """The face whose box centre is nearest the image centre, among those at least ``min_width_ratio`` as wide as
    the widest; None for no faces."""
    if not faces:
        return None
    widest = max(f.box[2] - f.box[0] for f in faces)
    big = [f for f in faces if f.box[2] - f.box[0] >= min_width_ratio * widest]
    cx, cy = width / 2.0, height / 2.0
    return min(big, key=lambda f: ((f.box[0] + f.box[2]) / 2 - cx) ** 2 + ((f.box[1] + f.box[3]) / 2 - cy) ** 2)


def _read(path: Path) -> np.ndarray:
    return decode_image(Path(path).read_bytes(), max_pixels=_MAX_PIXELS)


def _faces_of(
    image: np.ndarray, spec: InputSpec, face: DetectedFace, teacher: DlibTeacher | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The model crop of a face and, with a teacher, the teacher's chip of it."""
    crop = model_face(image, face.landmarks, spec)
    return crop, (teacher.chip(image, face) if teacher is not None else None)


def _align_chunk(
    paths: list[str], spec_json: str, with_teacher: bool
) -> tuple[list[np.ndarray | None], list[np.ndarray | None], list[tuple[int, int]], np.ndarray | None]:
    """Worker: (crop or None per image, landmarks or None, (height, width), teacher rows of found faces)."""
    spec = InputSpec.model_validate_json(spec_json)
    detector = build_detector(landmarks=landmarks_for(spec))
    teacher = DlibTeacher() if with_teacher else None
    crops: list[np.ndarray | None] = []
    points: list[np.ndarray | None] = []
    sizes: list[tuple[int, int]] = []
    chips: list[np.ndarray] = []
    for path in paths:
        image = _read(Path(path))
        sizes.append((image.shape[0], image.shape[1]))
        face = central_face(detector.detect(image), image.shape[0], image.shape[1])
        if face is None:
            crops.append(None)
            points.append(None)
            continue
        crop, chip = _faces_of(image, spec, face, teacher)
        crops.append(crop)
        points.append(np.asarray(face.landmarks, dtype=np.float64))
        if chip is not None:
            chips.append(chip)
    rows = teacher.embed_chips(chips) if teacher is not None else None
    return crops, points, sizes, rows


def _fallback_landmarks(
    points: Sequence[np.ndarray | None], sizes: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], np.ndarray]:
    """Median detected landmarks relative to the image size, per image size (all sizes pooled as a default)."""
    by_size: dict[tuple[int, int], list[np.ndarray]] = {}
    pooled: list[np.ndarray] = []
    for pts, (h, w) in zip(points, sizes, strict=True):
        if pts is None:
            continue
        rel = pts / np.array([w, h])
        by_size.setdefault((h, w), []).append(rel)
        pooled.append(rel)
    default = np.median(pooled, axis=0) if pooled else ARCFACE_112.continuous_points((1, 1)) * 0.5 + 0.25
    return {
        (h, w): (np.median(by_size[(h, w)], axis=0) if by_size.get((h, w)) else default) * np.array([w, h])
        for h, w in set(sizes)
    }


def align_files(
    paths: Sequence[Path],
    spec: InputSpec,
    *,
    teacher: bool = False,
    workers: int = 2,
    cache_dir: Path | None = None,
    desc: str = "align",
    progress: bool = True,
) -> AlignedSet:
    """Detect, align and cut every image (see module doc) -> `AlignedSet` in `paths` order."""
    files = [str(Path(p).resolve()) for p in paths]
    detector_name = build_detector(landmarks=landmarks_for(spec)).name
    key = json.dumps([_CACHE_VERSION, spec.model_dump(mode="json"), teacher, detector_name, files])
    cache = cache_dir / f"{desc}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        with np.load(cache) as data:
            return AlignedSet(data["crops"], data["detected"], data["teacher"] if teacher else None)

    crops: list[np.ndarray | None] = []
    points: list[np.ndarray | None] = []
    sizes: list[tuple[int, int]] = []
    rows: list[np.ndarray] = []
    chunks = [files[i : i + _CHUNK] for i in range(0, len(files), _CHUNK)]
    spec_json = spec.model_dump_json()
    bar = tqdm(total=len(files), desc=desc, leave=False, disable=not progress, mininterval=2)
    if workers > 1 and len(chunks) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_align_chunk, chunk, spec_json, teacher) for chunk in chunks]
            results = []
            for future in futures:
                results.append(future.result())
                bar.update(len(results[-1][0]))
    else:
        results = []
        for chunk in chunks:
            results.append(_align_chunk(chunk, spec_json, teacher))
            bar.update(len(chunk))
    bar.close()
    for chunk_crops, chunk_points, chunk_sizes, chunk_rows in results:
        crops.extend(chunk_crops)
        points.extend(chunk_points)
        sizes.extend(chunk_sizes)
        if chunk_rows is not None:
            rows.append(chunk_rows)

    teacher_rows = np.concatenate(rows) if rows else np.zeros((0, TEACHER_DIM), np.float32)
    detected = np.array([p is not None for p in points], dtype=bool)
    teacher_out = np.zeros((len(files), TEACHER_DIM), np.float32) if teacher else None
    if teacher_out is not None:
        teacher_out[detected] = teacher_rows
    missing = np.flatnonzero(~detected)
    if len(missing):
        fallbacks = _fallback_landmarks(points, sizes)
        for i in missing:
            crops[i] = model_face(_read(Path(files[i])), fallbacks[sizes[i]], spec)
    filled = [c for c in crops if c is not None]  # every image has its crop by now
    width, height = template_for_spec(spec).size
    stacked = np.stack(filled) if filled else np.zeros((0, height, width, 3), np.uint8)
    result = AlignedSet(stacked, detected, teacher_out)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        saved_teacher = teacher_out if teacher_out is not None else np.zeros((0, TEACHER_DIM), np.float32)
        np.savez(tmp, crops=result.crops, detected=result.detected, teacher=saved_teacher)
        tmp.replace(cache)
    return result
