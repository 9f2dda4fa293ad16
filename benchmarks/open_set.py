"""Open-set identification on real faces: galleries from 100 people to every person the shared data holds.

Stages (each a subcommand; the first is slow and cached, the others take seconds to minutes):

- ``embed``: every photo of the shared data (LFW folds 1-9, CelebA subset, AT&T, Extended Yale B, Yale A)
  through facedb's face path: YuNet finds the faces, the labelled person's is kept (the face nearest the centre
  of those at least half as wide as the widest), and its
  landmarks are YuNet's own five points and dlib's 5-point predictor's (mapped as the service maps them). Each
  embedder in `EMBEDDERS` embeds the face and its mirror image, aligned with the landmarks it is served with.
  Cached as ``.npz`` under ``--cache`` (one file per data set and embedder): later stages never touch an image.
- ``library``: the numbers, from the cached embeddings with exact search (facedb's `GalleryIndex`), for each
  embedder and fusion at every gallery size (`evaluate_view`), and the enrolment runs (`enrolment_run`).
- ``calibrate``: writes a model's thresholds and 1:N calibration into its card, measured on the *calibration*
  split only (with a second impostor table from the same photos turned grey: `condition_vectors`), with the
  evaluation split's table for the record (`write_card`). Every decision the stages model takes each photo's
  condition as the service does (`photo_conditions`, measured from the photos once and cached).
- ``http``: one gallery size (or, with ``--everyone``, every person) through a real server's HTTP API, enrolled
  and searched as a client would, the default model and a baseline each in a fresh server.
- ``folders``: every identity of the shared data enrolled with ``facedb enroll DIR`` as the README enrols a folder
  (each identity's photos in one request), each person's last photo kept back and then enrolled again under a new id.

Splits (identity-disjoint; `split_of`): LFW people whose name hashes to 0 mod 3 form the *calibration* split,
which alone chooses thresholds, score normalisation and the default embedder's settings; every other person
(the rest of LFW, CelebA, AT&T and both Yale sets) forms the *evaluation* split that the reported figures come
from. The model card says the same.

    python -m benchmarks.open_set embed [--workers 2]
    python -m benchmarks.open_set library --json open_set.json
    python -m benchmarks.open_set http --size 1000 --json open_set_http.json
    python -m benchmarks.open_set folders --json open_set_folders.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedding.train.data import DatasetSpec, list_identity_folder
from embedding.train.evaluation import cross_scores, threshold_at_far

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "facedb" / "open_set"


@dataclass(frozen=True)
class DataSet:
    """One identity-folder set of the shared data: ``root/<identity>/<image>``."""

    name: str
    root: Path


DATASETS = (
    DataSet("lfw", DATA / "lfw" / "images"),
    DataSet("celeba", DATA / "celeba_subset"),
    DataSet("att", DATA / "att_faces"),
    DataSet("yaleb", DATA / "extended_yale_b"),
    DataSet("yalea", DATA / "yalefaces"),
)


@dataclass(frozen=True)
class EmbedderSpec:
    """A model file and the landmarks its faces are aligned with ("dlib5" or "yunet")."""

    name: str
    path: Path
    landmarks: str


EMBEDDERS = (
    EmbedderSpec("dlib", REPO / "embedding/models/dlib_resnet.pt", "dlib5"),
    EmbedderSpec("sface_yunet", REPO / "embedding/models/sface.onnx", "yunet"),  # the landmarks ablation
    EmbedderSpec("compact", REPO / "embedding/models/compact.pt", "dlib5"),
    EmbedderSpec("sface", REPO / "embedding/models/sface.onnx", "dlib5"),
    EmbedderSpec("dlib_sface", REPO / "embedding/models/dlib_sface.onnx", "dlib5"),  # dlib + sface as one model
)


SAME_PERSON = {
    "lfw/Sung_Hong_Choi": "lfw/Choi_Sung-hong",
    "lfw/Noer_Moeis": "lfw/Noer_Muis",
    "lfw/Hasan_Wirayuda": "lfw/Hassan_Wirajuda",
    "lfw/Chyung_Dai-chul": "lfw/Dai_Chul_Chyung",
    "lfw/Yingfan_Wang": "lfw/Wang_Yingfan",
    "lfw/Talisa_Bratt": "lfw/Talisa_Soto",
    "lfw/Doc_Rivers": "lfw/Glenn_Rivers",
    "lfw/Brian_Williams": "lfw/Bison_Dele",
    "lfw/Odai_Hussein": "lfw/Uday_Hussein",
    "lfw/Bill_Pryor": "lfw/William_Pryor_Jr",
    "lfw/Mireya_Elisa_Moscoso_Rodriguez": "lfw/Mireya_Moscoso",
    "lfw/Wang_Nan": "lfw/Nan_Wang",
}
"""LFW folders that hold one person under two names (transliterations, a married name, a nickname, a change of
name, a full name), merged into one identity. Found among the top false matches of this benchmark and kept only where
the names alone show it is one person; other high-scoring pairs (one photo filed under two people who appear in it)
stay as they are and count against every embedder alike."""


def split_of(identity: str) -> str:
    """ "calibration" or "evaluation" for a qualified identity name such as ``lfw/George_W_Bush``."""
    dataset, _, person = identity.partition("/")
    if dataset == "lfw" and int(hashlib.sha256(person.encode()).hexdigest()[:8], 16) % 3 == 0:
        return "calibration"
    return "evaluation"


def list_images(dataset: DataSet) -> list[tuple[str, Path]]:
    """(qualified identity, image path) for every image of a set, sorted by identity then file name."""
    images = list_identity_folder(DatasetSpec(root=dataset.root, name=dataset.name))
    return [(f"{dataset.name}/{image.identity}", image.path) for image in images]


# --- embed ---------------------------------------------------------------------------------------------


def _unflipped(spec: EmbedderSpec, tmp: Path) -> Path:
    """The model file with mirror-image augmentation off in its card (both views are embedded here)."""
    from embedding.train.cli import _with_flip  # noqa: PLC0415

    return _with_flip(spec.path, tmp, False)


def load_unflipped(spec: EmbedderSpec, tmp: Path, *, threads: int = 0) -> Any:
    """The embedder of ``spec`` with mirror-image augmentation off (a copy of its file under ``tmp``), loaded with
    onnxruntime on ``threads`` threads (0: its default), calibrated or not."""
    from embedding.embedder import load_embedder  # noqa: PLC0415

    embedder = load_embedder(
        _unflipped(spec, tmp),
        runtime="onnx",
        onnx_cache=CACHE.parent / "onnx",
        threads=threads,
        allow_uncalibrated=True,
    )
    embedder.load()
    return embedder


def _embed_shard(args: tuple[list[str], list[str], list[str], int]) -> dict[str, np.ndarray]:
    """Worker: detect, align and embed one shard of images (one thread)."""
    paths, _names, models, batch = args
    from embedding.detect import DlibLandmarks  # noqa: PLC0415
    from embedding.errors import ImageError  # noqa: PLC0415
    from embedding.facepath import decode, model_face  # noqa: PLC0415
    from embedding.train.faceset import central_face  # noqa: PLC0415
    from embedding.yunet import YuNetDetector  # noqa: PLC0415

    specs = [s for s in EMBEDDERS if s.name in models]
    yunet = YuNetDetector(threads=1)
    refiner = DlibLandmarks(yunet, model="5")
    n = len(paths)
    out: dict[str, np.ndarray] = {
        "found": np.zeros(n, dtype=bool),
        "box": np.zeros((n, 4), dtype=np.float32),
        "score": np.zeros(n, dtype=np.float32),
        "yunet": np.zeros((n, 5, 2), dtype=np.float32),
        "dlib5": np.zeros((n, 5, 2), dtype=np.float32),
    }
    images: list[np.ndarray | None] = []
    for i, p in enumerate(paths):
        try:
            rgb = decode(Path(p).read_bytes(), max_pixels=50_000_000)
        except ImageError:
            images.append(None)
            continue
        # LFW's photos are centred on the person they are filed under; some hold a bigger face of someone else.
        face = central_face(yunet.detect(rgb), rgb.shape[0], rgb.shape[1], min_width_ratio=0.5)
        if face is None:
            images.append(None)
            continue
        refined = refiner.refine(rgb, [face])[0]
        out["found"][i] = True
        out["box"][i] = face.box
        out["score"][i] = face.score
        out["yunet"][i] = face.landmarks
        out["dlib5"][i] = refined.landmarks
        images.append(rgb)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            embedder = load_unflipped(spec, Path(tmp), threads=1)
            dim = embedder.card.embedding_dim
            for view in ("o", "m"):
                out[f"{spec.name}_{view}"] = np.zeros((n, dim), dtype=np.float32)
            found = {i: image for i, image in enumerate(images) if image is not None}
            idx = sorted(found)
            for start in range(0, len(idx), batch):
                chunk = idx[start : start + batch]
                crops = [model_face(found[i], out[spec.landmarks][i], embedder.card.input) for i in chunk]
                out[f"{spec.name}_o"][chunk] = embedder.embed(crops)
                out[f"{spec.name}_m"][chunk] = embedder.embed([np.ascontiguousarray(c[:, ::-1]) for c in crops])
    return out


def cache_file(cache: Path, dataset: str, part: str) -> Path:
    """Where one data set's detections (``part="faces"``) or one embedder's vectors are cached."""
    return cache / f"{dataset}.{part}.npz"


def embed(cache: Path, *, workers: int, models: Sequence[str], datasets: Sequence[str], batch: int = 16) -> None:
    """Fill the cache for every data set and embedder that is not cached yet."""
    cache.mkdir(parents=True, exist_ok=True)
    for ds in DATASETS:
        if ds.name not in datasets:
            continue
        if not ds.root.is_dir():
            print(f"skip {ds.name}: {ds.root} is absent", file=sys.stderr)
            continue
        todo = [m for m in models if not cache_file(cache, ds.name, m).exists()]
        if not todo and cache_file(cache, ds.name, "faces").exists():
            continue
        rows = list_images(ds)
        started = time.perf_counter()
        shards = [list(range(i, len(rows), workers)) for i in range(workers)]
        jobs = [([str(rows[i][1]) for i in s], [rows[i][0] for i in s], todo, batch) for s in shards]
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_embed_shard, jobs))
        merged: dict[str, np.ndarray] = {}
        for key in parts[0]:
            first = parts[0][key]
            merged[key] = np.zeros((len(rows), *first.shape[1:]), dtype=first.dtype)
            for shard, part in zip(shards, parts, strict=True):
                merged[key][shard] = part[key]
        identities = np.array([r[0] for r in rows])
        files = np.array([str(r[1].relative_to(ds.root)) for r in rows])
        arrays: dict[str, Any] = {k: merged[k] for k in ("found", "box", "score", "yunet", "dlib5")}
        np.savez(cache_file(cache, ds.name, "faces"), identity=identities, image=files, **arrays)
        for m in todo:
            np.savez(cache_file(cache, ds.name, m), o=merged[f"{m}_o"], m=merged[f"{m}_m"])
        found = merged["found"].mean()
        print(f"{ds.name}: {len(rows)} images, faces found in {found:.1%}, {time.perf_counter() - started:.0f} s")


# --- views: an embedder, its mirror augmentation, fusions ------------------------------------------------


@dataclass(frozen=True)
class Faces:
    """Every photo of the shared data under one view: identity (N,) str, split (N,) str, found (N,) bool,
    x float32 (N, D) unit rows (zero where no face was found); parts: a fusion's part dims (None: one model); photo:
    each photo's condition measures (None: every photo taken as colour)."""

    identity: np.ndarray
    split: np.ndarray
    found: np.ndarray
    x: np.ndarray
    parts: tuple[int, ...] | None = None
    photo: PhotoConditions | None = None

    def conditions(self) -> np.ndarray:
        """Each photo's `embedding.openset.CONDITIONS` label ("": colour)."""
        if self.photo is None:
            return np.full(len(self.identity), "")
        return self.photo.labels()


def bars(cal: Any, conditions: np.ndarray, compared: int, fpir: float) -> np.ndarray:
    """float (n,): the 1:N threshold at ``fpir`` against ``compared`` faces or people for each photo of
    ``conditions`` (n,) labels, from the card's table for its condition, as the service sets it."""
    out = np.empty(len(conditions))
    for label in np.unique(conditions):
        out[conditions == label] = cal.under(str(label) or None).threshold(compared, fpir)
    return out


def _unit(x: np.ndarray, parts: tuple[int, ...] | None = None, dtype: Any = np.float32) -> np.ndarray:
    """Unit rows; a fusion's rows part by part (`index.base.unit_means`)."""
    from index.base import unit_means  # noqa: PLC0415

    return unit_means(np.asarray(x, dtype=np.float64), parts, dtype=dtype)


def _model_parts(model: str) -> tuple[int, ...] | None:
    """The part dims of a cached model that is itself a fusion (its card's `parts`), else None."""
    from embedding.embedder import read_card  # noqa: PLC0415

    spec = next((s for s in EMBEDDERS if s.name == model), None)
    if spec is None or not spec.path.exists():
        return None
    parts = read_card(spec.path).parts
    return tuple(parts) if parts else None


def load_view(cache: Path, view: str, datasets: Sequence[str] | None = None) -> Faces:
    """A view such as ``sface``, ``dlib:flip`` (mirror-image augmentation) or ``dlib:flip+sface`` (fusion:
    the normalised vectors concatenated and scaled by 1/sqrt(k), so that a cosine is the mean of the k cosines),
    of every cached data set, or of exactly ``datasets`` (FileNotFoundError naming the command if one is missing)."""
    if datasets is not None:
        missing = [d for d in datasets if not cache_file(cache, d, "faces").exists()]
        if missing:
            raise FileNotFoundError(
                f"no cached embeddings of {', '.join(missing)} in {cache}: run `python -m benchmarks.open_set embed "
                f"--models {view.partition(':')[0]} --datasets {' '.join(missing)}` first"
            )
    identities, found, blocks = [], [], []
    comps_parts = [_model_parts(comp.partition(":")[0]) for comp in view.split("+")]
    if len(comps_parts) > 1 and any(comps_parts):
        raise ValueError(f"{view}: a fusion of fused models is not supported")
    for ds in DATASETS:
        faces_file = cache_file(cache, ds.name, "faces")
        if not faces_file.exists() or (datasets is not None and ds.name not in datasets):
            continue
        meta = np.load(faces_file)
        comps = []
        for comp in view.split("+"):
            model, _, option = comp.partition(":")
            vectors = np.load(cache_file(cache, ds.name, model))
            own = comps_parts[0] if len(comps_parts) == 1 else None
            comps.append(_unit(vectors["o"] + vectors["m"], own) if option == "flip" else vectors["o"])
        identities.append(np.array([SAME_PERSON.get(str(i), str(i)) for i in meta["identity"]]))
        found.append(meta["found"])
        blocks.append(np.concatenate(comps, axis=1) / np.sqrt(len(comps)))
        dims = tuple(c.shape[1] for c in comps)
    if not identities:
        raise FileNotFoundError(
            f"no cached embeddings in {cache}: run `python -m benchmarks.open_set embed --models sface` first"
        )
    identity = np.concatenate(identities)
    x = np.concatenate(blocks).astype(np.float32)
    return Faces(
        identity=identity,
        split=np.array([split_of(str(i)) for i in identity]),
        found=np.concatenate(found),
        x=x,
        parts=comps_parts[0] if len(dims) == 1 else dims,
        photo=photo_conditions(cache, datasets),
    )


# --- photo conditions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoConditions:
    """How the service would see each cached photo, in `load_view` order: ``chroma`` (N,) of the face region
    (`embedding.quality.chroma_of`) and ``inter_eye_px`` (N,) from the served (dlib 5-point) landmarks; 0 where no
    face was found."""

    chroma: np.ndarray
    inter_eye_px: np.ndarray

    def labels(self) -> np.ndarray:
        """Each photo's `embedding.openset.CONDITIONS` label ("" for colour)."""
        from embedding.openset import condition_of  # noqa: PLC0415

        return np.array([condition_of(float(c)) or "" for c in self.chroma])


def _measure_conditions(ds: DataSet, meta: Any) -> dict[str, np.ndarray]:
    from embedding.facepath import decode  # noqa: PLC0415
    from embedding.quality import chroma_of, face_region  # noqa: PLC0415

    n = len(meta["image"])
    chroma, ied = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
    for i in np.flatnonzero(meta["found"]):
        landmarks = meta["dlib5"][i]
        rgb = decode((ds.root / str(meta["image"][i])).read_bytes(), max_pixels=50_000_000)
        chroma[i] = chroma_of(face_region(rgb, landmarks))
        ied[i] = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    return {"chroma": chroma, "inter_eye_px": ied}


def photo_conditions(cache: Path, datasets: Sequence[str] | None = None) -> PhotoConditions:
    """`PhotoConditions` of the cached photos (as `load_view` with the same ``datasets``), measured from the photos
    on first use and cached beside their faces (a minute or two for the whole shared data)."""
    parts: dict[str, list[np.ndarray]] = {"chroma": [], "inter_eye_px": []}
    for ds in DATASETS:
        faces_file = cache_file(cache, ds.name, "faces")
        if not faces_file.exists() or (datasets is not None and ds.name not in datasets):
            continue
        target = cache_file(cache, ds.name, "conditions")
        if not target.exists():
            measures = _measure_conditions(ds, np.load(faces_file))
            np.savez(target, chroma=measures["chroma"], inter_eye_px=measures["inter_eye_px"])
        measured = np.load(target)
        for key, values in parts.items():
            values.append(measured[key])
    return PhotoConditions(np.concatenate(parts["chroma"]), np.concatenate(parts["inter_eye_px"]))


def in_condition(image: np.ndarray, landmarks: np.ndarray, *, grey: bool, inter_eye_px: float | None) -> Any:
    """(image, landmarks) of a photo as a grey camera and/or one farther away would take it: luma in all three
    channels, and shrunk (area average) so the eyes are ``inter_eye_px`` apart where they are farther."""
    from PIL import Image  # noqa: PLC0415

    picture = Image.fromarray(image)
    if grey:
        picture = picture.convert("L").convert("RGB")
    ied = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    if inter_eye_px is not None and ied > inter_eye_px:
        scale = inter_eye_px / ied
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BOX)
        landmarks = landmarks * np.array([size[0] / image.shape[1], size[1] / image.shape[0]], dtype=np.float32)
    return np.asarray(picture), landmarks


def embed_in_condition(
    spec: EmbedderSpec, cache: Path, rows: np.ndarray, *, grey: bool, inter_eye_px: float | None, batch: int = 32
) -> np.ndarray:
    """float32 (len(rows), D): the LFW photos at ``rows`` (rows of `load_view`, LFW's come first) embedded by
    ``spec``'s served (unflipped) model after `in_condition`."""
    from embedding.facepath import decode, model_face  # noqa: PLC0415

    lfw = DATASETS[0]
    meta = np.load(cache_file(cache, lfw.name, "faces"))
    with tempfile.TemporaryDirectory() as tmp:
        embedder = load_unflipped(spec, Path(tmp))
        out = []
        for start in range(0, len(rows), batch):
            crops = []
            for r in rows[start : start + batch]:
                rgb = decode((lfw.root / str(meta["image"][r])).read_bytes(), max_pixels=50_000_000)
                image, landmarks = in_condition(rgb, meta[spec.landmarks][r], grey=grey, inter_eye_px=inter_eye_px)
                crops.append(model_face(image, landmarks, embedder.card.input))
            out.append(embedder.embed(crops))
    return np.concatenate(out).astype(np.float32)


# --- library: galleries of every size -------------------------------------------------------------------

FPIRS = (1e-1, 1e-2, 1e-3)


@dataclass(frozen=True)
class Gallery:
    """Enrolled photos (row indices into `Faces`) with their identity numbers, and the probes."""

    rows: np.ndarray
    labels: np.ndarray
    mated: np.ndarray
    mated_labels: np.ndarray


def _by_identity(faces: Faces, split: str) -> tuple[list[str], dict[str, list[int]]]:
    rows: dict[str, list[int]] = {}
    for i, (ident, sp) in enumerate(zip(faces.identity, faces.split, strict=True)):
        if sp == split:
            rows.setdefault(str(ident), []).append(i)
    names = [n for n, r in rows.items() if faces.found[r].any()]
    return names, rows


PHOTOS_PER_STRANGER = 5


def probe_photos(faces: Faces, names: Sequence[str], rows: dict[str, list[int]]) -> np.ndarray:
    """Rows of up to `PHOTOS_PER_STRANGER` photos (with a face) of each person: the strangers, and the photos of the
    1:1 impostor table. The cap keeps a few people with hundreds of photos (LFW's George W. Bush has 530) from
    being most of the strangers, whose best scores would then rise and fall together."""
    return np.array([r for n in names for r in [r for r in rows[n] if faces.found[r]][:PHOTOS_PER_STRANGER]])


def make_gallery(
    faces: Faces, names: Sequence[str], rows: dict[str, list[int]], *, photos: int, max_mated: int = 10
) -> Gallery:
    """Enrol each person's first ``photos`` photos that have a face; up to ``max_mated`` later photos are probes."""
    g_rows, g_labels, m_rows, m_labels = [], [], [], []
    for label, name in enumerate(names):
        with_face = [r for r in rows[name] if faces.found[r]]
        enrol = with_face[:photos] if len(with_face) > photos else with_face[:1]
        g_rows += enrol
        g_labels += [label] * len(enrol)
        rest = [r for r in rows[name] if r not in enrol][:max_mated]
        m_rows += rest
        m_labels += [label] * len(rest)
    return Gallery(np.array(g_rows), np.array(g_labels), np.array(m_rows, dtype=int), np.array(m_labels, dtype=int))


def search(
    gallery_x: np.ndarray,
    labels: np.ndarray,
    probes: np.ndarray,
    k: int,
    scoring: str = "best",
    parts: tuple[int, ...] | None = None,
) -> list[list[Any]]:
    """Identity-level top-k through facedb's own `index.gallery.GalleryIndex` (exact FAISS search); ``scoring``:
    an identity scores by its best face or by the normalised mean of its faces (`FACEDB_IDENTITY_SCORE`; a
    fusion's mean part by part: ``parts``)."""
    from index.gallery import GalleryIndex  # noqa: PLC0415

    index = GalleryIndex(gallery_x.shape[1], identity_score="mean" if scoring == "mean" else "best", mean_parts=parts)
    index.add(np.arange(len(labels)), labels, gallery_x)
    return index.search(probes, k)


@dataclass(frozen=True)
class Outcome:
    """Per mated probe: rank of its mate (0 = first, -1 = not in the top 5 or no face) and top score;
    per stranger: the best score of any other person (-1 where no face was found)."""

    mate_rank: np.ndarray
    mate_top: np.ndarray
    stranger: np.ndarray


def run_gallery(
    faces: Faces, gallery: Gallery, strangers: np.ndarray, stranger_labels: np.ndarray, scoring: str = "best"
) -> Outcome:
    """Search mated probes and strangers (a stranger never scores against its own identity's photos)."""
    gx = faces.x[gallery.rows]
    found = faces.found[gallery.mated]
    hits = search(gx, gallery.labels, faces.x[gallery.mated[found]], 5, scoring, faces.parts) if found.any() else []
    ranks = np.full(len(gallery.mated), -1)
    tops = np.full(len(gallery.mated), -1.0)
    for j, row in zip(np.flatnonzero(found), hits, strict=True):
        ids = [h.identity_id for h in row]
        ranks[j] = ids.index(gallery.mated_labels[j]) if gallery.mated_labels[j] in ids else -1
        tops[j] = row[0].score
    s_hits = search(gx, gallery.labels, faces.x[strangers], 2, scoring, faces.parts)
    best = np.array(
        [
            next((h.score for h in row if h.identity_id != own), -1.0)
            for row, own in zip(s_hits, stranger_labels, strict=True)
        ]
    )
    return Outcome(ranks, tops, best)


def fnir_at(outcome: Outcome, threshold: float | np.ndarray) -> float:
    """Mated searches whose mate is not first with a score >= threshold (one, or one per mated probe)."""
    ok = (outcome.mate_rank == 0) & (outcome.mate_top >= threshold)
    return float(1.0 - ok.mean())


def fpir_at(outcome: Outcome, threshold: float | np.ndarray) -> float:
    """Strangers whose best score is >= threshold (one, or one per stranger)."""
    return float((outcome.stranger >= threshold).mean())


# --- calibration (calibration split only) --------------------------------------------------------------

CAL_SIZES = (30, 100, 300, 1000)
K_FPIRS = (1e-2, 3e-3)
TABLE_FARS = tuple(10.0 ** (-e / 2) for e in range(2, 21))  # 1e-1, 3.2e-2, ... 1e-10


def far_table(impostors: np.ndarray, *, min_pairs: int = 50) -> tuple[dict[str, float], float]:
    """1:1 thresholds by FAR from impostor scores: measured where at least ``min_pairs`` pairs lie above, then the
    exponential tail (threshold linear in log10 FAR) fitted on the last measured decade and a half."""
    s = np.sort(impostors)[::-1]
    measured = [far for far in TABLE_FARS if far * len(s) >= min_pairs]
    table = {f"{far:.1e}": float(s[int(far * len(s)) - 1]) for far in measured}
    logs = np.log10(measured[-4:])
    slope, intercept = np.polyfit(logs, [table[f"{f:.1e}"] for f in measured[-4:]], 1)
    for far in TABLE_FARS[len(measured) :]:
        table[f"{far:.1e}"] = float(intercept + slope * np.log10(far))
    return table, measured[-1]


def condition_vectors(cache: Path, view: str, faces: Faces) -> dict[str, np.ndarray] | None:
    """`embedding.openset.CONDITIONS` label -> float32 (P, D): the calibration split's `probe_photos` as a grey
    camera would take them, through ``view`` (a served model of `EMBEDDERS`; None for views that are not one),
    cached per view (a few minutes the first time)."""
    from embedding.openset import CONDITIONS, GREY  # noqa: PLC0415

    spec = next((s for s in EMBEDDERS if s.name == view), None)
    if spec is None:
        return None
    names, rows = _by_identity(faces, "calibration")
    photos = probe_photos(faces, names, rows)
    out = {}
    for label in CONDITIONS:
        target = cache / f"conditions.{view}.{label}.npz"
        if target.exists() and np.array_equal(np.load(target)["rows"], photos):
            out[label] = np.load(target)["x"]
            continue
        out[label] = embed_in_condition(spec, cache, photos, grey=label == GREY, inter_eye_px=None)
        np.savez(target, rows=photos, x=out[label])
    return out


def fit_open_set(
    faces: Faces, *, seed: int = 0, repeats: int = 5, conditions: dict[str, np.ndarray] | None = None
) -> Any:
    """`embedding.openset.OpenSetCalibration` from the calibration split: the 1:1 table from every different-person
    pair of its photos (up to `PHOTOS_PER_STRANGER` per person), k from single-photo galleries of `CAL_SIZES` people,
    and a table for each photo condition in ``conditions`` (`condition_vectors`: the same photos in that condition).

    Galleries hold at most half of the split's people, so that most strangers are people who are not enrolled, as at
    a door: with everyone enrolled, every stranger is a left-out photo of an enrolled person, and the people filed
    under two names (or sharing a photo) in the data would all meet their double in the gallery."""
    from embedding.openset import OpenSetCalibration  # noqa: PLC0415

    names, rows = _by_identity(faces, "calibration")
    photos = probe_photos(faces, names, rows)
    impostors = cross_scores(faces.x[photos], faces.identity[photos])[1]
    table, measured = far_table(impostors)
    base = OpenSetCalibration(far_thresholds=table, comparisons_per_face={"1": 1.0}, measured_far=measured)
    rng = np.random.default_rng(seed)
    per_size: dict[str, float] = {}
    for size in [s for s in CAL_SIZES if s <= 0.5 * len(names)]:
        estimates = []
        for _ in range(repeats):
            chosen = [names[i] for i in rng.choice(len(names), size=size, replace=False)]
            gallery = make_gallery(faces, chosen, rows, photos=1)
            label = {n: i for i, n in enumerate(chosen)}
            strangers_labels = np.array([label.get(str(faces.identity[r]), -1) for r in photos])
            outcome = run_gallery(faces, gallery, photos, strangers_labels)
            for fpir in K_FPIRS:
                far = base.fpir(1, threshold_at_far(outcome.stranger, fpir))  # one face, k = 1: the 1:1 FAR
                estimates.append(math.log(-math.log1p(-fpir) / (len(gallery.rows) * -math.log1p(-far))))
        per_size[str(size)] = round(math.exp(float(np.mean(estimates))), 4)
    by_condition = {
        label: far_table(cross_scores(x, faces.identity[photos])[1])[0] for label, x in (conditions or {}).items()
    }
    return OpenSetCalibration(
        far_thresholds=table,
        comparisons_per_face=per_size,
        measured_far=measured,
        source=f"benchmarks/open_set.py calibration split: {len(names)} LFW people (folds 1-9, name hash 0 mod 3), "
        f"{len(photos)} photos, {impostors.size} different-person pairs"
        + ("; grey: the same photos in grey (benchmarks/open_set.py in_condition)" if by_condition else ""),
        condition_thresholds=by_condition,
    )


# --- evaluation (evaluation split) -----------------------------------------------------------------------

SIZES = (100, 300, 1000, 3000)


def gallery_row(
    gallery: Gallery,
    outcome: Outcome,
    cal: Any,
    targets: Sequence[float],
    scoring: str,
    conditions: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The figures of one gallery: ranks, FNIR at each FPIR (threshold set on these strangers), and the
    calibrated decision (threshold from the calibration split alone) at each target FPIR, with each probe's
    photo condition (``conditions``: labels of the mated probes and of the strangers; None: all colour)."""
    row: dict[str, Any] = {
        "identities": len(set(gallery.labels.tolist())),
        "faces": len(gallery.rows),
        "mated_probes": len(gallery.mated),
        "strangers": len(outcome.stranger),
        "rank1": float((outcome.mate_rank == 0).mean()),
        "rank5": float((outcome.mate_rank >= 0).mean()),
        "fnir_at_fpir": {},
        "calibrated": {},
    }
    for fpir in FPIRS:
        t = threshold_at_far(outcome.stranger, fpir)
        row["fnir_at_fpir"][f"{fpir:g}"] = {"threshold": round(t, 4), "fnir": round(fnir_at(outcome, t), 4)}
    mated_conditions, stranger_conditions = conditions or (
        np.full(len(outcome.mate_top), ""),
        np.full(len(outcome.stranger), ""),
    )
    for target in targets:
        compared = row["identities"] if scoring == "mean" else row["faces"]  # what the service calibrates with
        row["calibrated"][f"{target:g}"] = {
            "threshold": round(cal.threshold(compared, target), 4),  # colour photos'; grey ones have their own
            "fpir": round(fpir_at(outcome, bars(cal, stranger_conditions, compared, target)), 5),
            "fnir": round(fnir_at(outcome, bars(cal, mated_conditions, compared, target)), 4),
        }
    return row


@dataclass(frozen=True)
class EnrolmentPlan:
    """Who enrols which photos, in data-set order: the people's names (P), the rows into `Faces` they enrol (N,
    grouped by person), each row's person number (int (N,)), and the row of each person's held-back photo (person
    number -> row) where they have one."""

    names: list[str]
    rows: list[int]
    labels: np.ndarray
    held: dict[int, int]


def enrolment_plan(faces: Faces, *, split: str | None, photos: int | None) -> EnrolmentPlan:
    """Every person of ``split`` (None: all) with a face, each enrolling up to ``photos`` photos with a face (None:
    every one), one fewer where that leaves none to hold back: the next is held back."""
    people: dict[str, list[int]] = {}
    for i, (name, sp) in enumerate(zip(faces.identity, faces.split, strict=True)):
        if (split is None or sp == split) and faces.found[i]:
            people.setdefault(str(name), []).append(i)
    rows, labels, held = [], [], {}
    for label, found in enumerate(people.values()):
        most = max(len(found) - 1, 1)  # one photo kept back where there are two or more
        m = most if photos is None else min(photos, most)
        rows += found[:m]
        labels += [label] * m
        if len(found) > m:
            held[label] = found[m]
    return EnrolmentPlan(list(people), rows, np.array(labels, dtype=int), held)


def enrolment_run(
    faces: Faces,
    cal: Any,
    *,
    split: str | None,
    conflict_fpir: float,
    mismatch_far: float,
    photos: int | None = 1,
    identity_score: str = "mean",
    target_fpir: float = 1e-2,
) -> dict[str, Any]:
    """Enrol every person in data-set order, each with up to ``photos`` photos (None: every photo; one fewer where
    that leaves none to hold out), with the service's checks: a photo is refused as a conflict when another person
    scores (by the normalised mean of their faces, or their best face: ``identity_score``) at or above the 1:N
    conflict threshold for the faces enrolled so far, and as a mismatch when it scores below the 1:1 mismatch
    threshold against its own person's faces (both bars from the card's table for the photo's condition); one
    accepted below the conflict bar but at or above identify's threshold (``target_fpir`` for the people enrolled so
    far) is warned of as a possible duplicate. Then each person's next photo is enrolled under a new id: caught when
    the check names that person, named when a refusal or a warning does. Also a stranger's photo added to a person:
    accepted when it passes."""
    plan = enrolment_plan(faces, split=split, photos=photos)
    names, rows, held, lab = plan.names, plan.rows, plan.held, plan.labels
    x = faces.x[rows]
    conditions = faces.conditions()
    cal_of = {str(c): cal.under(str(c) or None) for c in np.unique(conditions)}
    row_cal = [cal_of[str(conditions[r])] for r in rows]
    accepted = np.zeros(len(rows), dtype=bool)
    conflict = np.zeros(len(rows), dtype=bool)
    mismatch = np.zeros(len(rows), dtype=bool)
    rival = np.full(len(rows), -2.0)  # the best other person's score for an accepted photo, and identify's bar
    bar = np.ones(len(rows))
    rival_of = np.full(len(rows), -1)
    t_mismatch = cal.threshold_at_far(mismatch_far)  # a colour photo's; a grey one's from its table, as served
    refusals = []
    means = PersonMeans.from_sums(np.zeros((len(names), x.shape[1])), faces.parts)
    for start in range(0, len(rows), 512):
        block = x[start : start + 512] @ x.T
        for r in range(block.shape[0]):
            i = start + r
            prior = accepted[:i]
            other, score = _best_other(block[r, :i], prior, lab[:i], lab[i], means, x[i], identity_score)
            if other >= 0 and score >= row_cal[i].threshold(int(prior.sum()), conflict_fpir):
                conflict[i] = True
                refusals.append((str(faces.identity[rows[i]]), names[other], round(score, 4)))
                continue
            own = prior & (lab[:i] == lab[i])
            if own.any() and block[r, :i][own].max() < row_cal[i].threshold_at_far(mismatch_far):
                mismatch[i] = True
                continue
            accepted[i] = True
            if other >= 0:
                rival[i], rival_of[i] = score, other
                bar[i] = _identify_bar(row_cal[i], means, prior, identity_score, target_fpir)
            means.add(int(lab[i]), x[i])
    warned = _warned(x, lab, accepted, rival, bar)
    warnings = [(str(faces.identity[rows[i]]), names[rival_of[i]], round(rival[i], 4)) for i in np.flatnonzero(warned)]
    enrolled = np.unique(lab[accepted])
    tried = [k for k in held if k in set(enrolled.tolist())]
    held_rows = [held[k] for k in tried]
    t_conflict = bars(cal, conditions[held_rows], int(accepted.sum()), conflict_fpir)
    compared = int(means.enrolled.sum()) if identity_score == "mean" else int(accepted.sum())
    t_warn = np.minimum(bars(cal, conditions[held_rows], compared, target_fpir), t_conflict)
    hits = search(x[accepted], lab[accepted], faces.x[held_rows], 1, identity_score, faces.parts)
    top = [(h[0].identity_id, h[0].score) for h in hits]
    caught = [who == k and score >= t for k, (who, score), t in zip(tried, top, t_conflict, strict=True)]
    named = [who == k and score >= t for k, (who, score), t in zip(tried, top, t_warn, strict=True)]
    wrong = [who != k and score >= t for k, (who, score), t in zip(tried, top, t_conflict, strict=True)]
    firsts = np.array([rows[int(np.flatnonzero(lab == k)[0])] for k in enrolled])
    shuffled = np.random.default_rng(1).permutation(len(firsts))
    impostor = np.einsum("ij,ij->i", faces.x[firsts], faces.x[firsts[shuffled]])[shuffled != np.arange(len(firsts))]
    person_refused = {int(lab[i]) for i in np.flatnonzero(conflict)}
    person_warned = {int(lab[i]) for i in np.flatnonzero(warned)}
    return {
        "people": len(names),
        "photos_per_person": photos,
        "identity_score": identity_score,
        "photos": len(rows),
        "conflict_fpir": conflict_fpir,
        "people_refused_as_conflicts": len(person_refused),
        "refusal_rate": round(len(person_refused) / len(names), 5),
        "photos_refused_as_conflicts": int(conflict.sum()),
        "photos_refused_as_mismatch": int(mismatch.sum()),
        "refusals": refusals[:60],
        "target_fpir": target_fpir,
        "people_warned": len(person_warned),
        "warning_rate": round(len(person_warned) / len(names), 5),
        "warnings": warnings[:60],
        "conflict_threshold_at_end": round(cal.threshold(int(accepted.sum()), conflict_fpir), 4),
        "reenrolled": len(tried),
        "reenrol_caught": round(float(np.mean(caught)), 4),
        "reenrol_named": round(float(np.mean(named)), 4),
        "reenrol_named_someone_else": round(float(np.mean(wrong)), 4),
        "mismatch_far": mismatch_far,
        "mismatch_threshold": round(t_mismatch, 4),
        "stranger_added_accepted": round(float((impostor >= t_mismatch).mean()), 4),
    }


def _warned(x: np.ndarray, labels: np.ndarray, accepted: np.ndarray, rival: np.ndarray, bar: np.ndarray) -> np.ndarray:
    """Accepted photos (bool (n,)) the service warns of as possible duplicates: the best other person scores
    ``rival`` >= identify's ``bar`` and above every other accepted photo of the photo's own person (all of a
    person's photos go in one request)."""
    out = np.zeros(len(labels), dtype=bool)
    for i in np.flatnonzero(accepted & (rival >= bar)):
        mine = np.flatnonzero(accepted & (labels == labels[i]))
        mine = mine[mine != i]
        out[i] = len(mine) == 0 or rival[i] > float((x[mine] @ x[i]).max())
    return out


def _identify_bar(cal: Any, people: PersonMeans, accepted: np.ndarray, identity_score: str, fpir: float) -> float:
    """Identify's threshold at ``fpir`` for what a query is compared with: the people enrolled (scored by their mean)
    or the faces accepted (``accepted`` (i,) bool) when people score by their best face."""
    compared = int(people.enrolled.sum()) if identity_score == "mean" else int(accepted.sum())
    return float(cal.threshold(compared, fpir))


@dataclass
class PersonMeans:
    """Each person's accepted faces summed (``sums`` (people, D) float64) and their normalised mean (``means``, a
    fusion's part by part: ``parts``; zero rows for people with no face yet), kept current one face at a time, so
    that a conflict check costs one product with the means, not renormalising every person."""

    sums: np.ndarray
    means: np.ndarray
    enrolled: np.ndarray
    parts: tuple[int, ...] | None = None

    @classmethod
    def from_sums(cls, sums: np.ndarray, parts: tuple[int, ...] | None = None) -> PersonMeans:
        """From sums of the faces accepted so far (a person with none has a zero row)."""
        sums = np.array(sums, dtype=np.float64)
        enrolled = np.linalg.norm(sums, axis=1) > 0
        means = np.zeros_like(sums)
        means[enrolled] = _unit(sums[enrolled], parts, np.float64)
        return cls(sums, means, enrolled, parts)

    def add(self, label: int, face: np.ndarray) -> None:
        """Count one more accepted face (D,) of person ``label``."""
        self.sums[label] += face
        self.means[label] = _unit(self.sums[label : label + 1], self.parts, np.float64)[0]
        self.enrolled[label] = True


def _best_other(
    scores: np.ndarray,
    prior: np.ndarray,
    labels: np.ndarray,
    label: int,
    people: PersonMeans,
    face: np.ndarray,
    identity_score: str,
) -> tuple[int, float]:
    """(label, score) of the enrolled person other than ``label`` who scores highest against ``face``, or (-1, -2):
    by their best face (``scores`` (i,): the face against every earlier photo; ``prior`` (i,): those accepted) or
    by the normalised mean of their accepted faces (``people``)."""
    if identity_score == "mean":
        enrolled = people.enrolled.copy()
        enrolled[label] = False
        if not enrolled.any():
            return -1, -2.0
        by_person = np.where(enrolled, people.means @ face, -2.0)
        j = int(np.argmax(by_person))
        return j, float(by_person[j])
    others = prior & (labels != label)
    if not others.any():
        return -1, -2.0
    masked = np.where(others, scores, -2.0)
    j = int(np.argmax(masked))
    return int(labels[j]), float(masked[j])


def evaluate_view(
    faces: Faces, cal: Any, *, sizes: Sequence[int], targets: Sequence[float], seed: int = 0
) -> dict[str, Any]:
    """Every gallery size (and the whole evaluation split) with one photo per person, and with several scored by the
    best face and by the mean of the faces."""
    names, rows = _by_identity(faces, "evaluation")
    strangers = probe_photos(faces, names, rows)
    out: dict[str, Any] = {"galleries": []}
    conditions = faces.conditions()
    for photos, scoring in ((1, "best"), (3, "best"), (3, "mean")):
        for size in [s for s in sizes if s < len(names)] + [len(names)]:
            rng = np.random.default_rng(seed + size)
            chosen = [names[i] for i in sorted(rng.choice(len(names), size=size, replace=False))]
            gallery = make_gallery(faces, chosen, rows, photos=photos)
            label = {n: i for i, n in enumerate(chosen)}
            labels = np.array([label.get(str(faces.identity[r]), -1) for r in strangers])
            outcome = run_gallery(faces, gallery, strangers, labels, scoring)
            row = gallery_row(
                gallery, outcome, cal, targets, scoring, (conditions[gallery.mated], conditions[strangers])
            )
            out["galleries"].append({"photos_per_person": photos, "identity_score": scoring, **row})
    return out


VIEWS = (
    "dlib:flip",
    "compact:flip",
    "sface_yunet",
    "sface",
    "sface:flip",
    "dlib_sface",
    "dlib_sface:flip",  # the served fusion with the whole aligned crop mirrored (not served: the card refuses it)
    "dlib:flip+sface",
    "dlib+sface",
    "dlib:flip+sface_yunet",
    "sface+sface_yunet",
)


def library(
    cache: Path,
    *,
    views: Sequence[str],
    sizes: Sequence[int],
    targets: Sequence[float],
    conflict_fpir: float,
    mismatch_far: float,
) -> dict[str, Any]:
    """Calibrate on the calibration split and measure on the evaluation split, for each view."""
    results: dict[str, Any] = {}
    for view in views:
        started = time.perf_counter()
        faces = load_view(cache, view)
        cal = fit_open_set(faces, conditions=condition_vectors(cache, view, faces))
        result = {
            "calibration": cal.model_dump(),
            **evaluate_view(faces, cal, sizes=sizes, targets=targets),
            "enrol_all_data": enrolment_run(
                faces, cal, split=None, conflict_fpir=conflict_fpir, mismatch_far=mismatch_far
            ),
            "enrol_all_data_3_photos": enrolment_run(
                faces, cal, split=None, conflict_fpir=conflict_fpir, mismatch_far=mismatch_far, photos=3
            ),
            "enrol_all_data_every_photo": enrolment_run(
                faces, cal, split=None, conflict_fpir=conflict_fpir, mismatch_far=mismatch_far, photos=None
            ),
            "enrol_all_data_3_photos_best": enrolment_run(
                faces,
                cal,
                split=None,
                conflict_fpir=conflict_fpir,
                mismatch_far=mismatch_far,
                photos=3,
                identity_score="best",
            ),
            "failure_to_acquire": round(float(1 - faces.found.mean()), 4),
        }
        results[view] = result
        print_view(view, result, time.perf_counter() - started)
    return results


def print_view(view: str, result: dict[str, Any], seconds: float) -> None:
    print(f"== {view}  (k by size {result['calibration']['comparisons_per_face']}, {seconds:.0f} s)")
    for g in result["galleries"]:
        fn = " ".join(f"{k}:{v['fnir']:.3f}@{v['threshold']:.3f}" for k, v in g["fnir_at_fpir"].items())
        cal = " ".join(f"{k}:fpir {v['fpir']:.4f} fnir {v['fnir']:.3f}" for k, v in g["calibrated"].items())
        head = f"  {g['photos_per_person']}ph {g['identity_score']} N={g['identities']:5d} r1 {g['rank1']:.3f}"
        print(f"{head} | FNIR {fn} | calibrated {cal}")
    for key in (
        "enrol_all_data",
        "enrol_all_data_3_photos",
        "enrol_all_data_every_photo",
        "enrol_all_data_3_photos_best",
    ):
        e = result[key]
        print(
            f"  {key}: {e['people']} people, refused {e['people_refused_as_conflicts']} ({e['refusal_rate']:.4f}), "
            f"re-enrol caught {e['reenrol_caught']:.3f} (wrong {e['reenrol_named_someone_else']:.3f}); "
            f"warned {e['people_warned']} ({e['warning_rate']:.4f}), re-enrol named {e['reenrol_named']:.3f}; "
            f"mismatch refusals {e['photos_refused_as_mismatch']}/{e['photos']} photos, "
            f"stranger accepted {e['stranger_added_accepted']:.3f}"
        )


def genuine_scores(faces: Faces, split: str) -> np.ndarray:
    """Every same-person pair's score among the photos (with a face) of one split."""
    names, rows = _by_identity(faces, split)
    out = []
    for n in names:
        x = faces.x[[r for r in rows[n] if faces.found[r]]]
        if len(x) > 1:
            out.append((x @ x.T)[np.triu_indices(len(x), 1)])
    return np.concatenate(out)


def write_card(
    model: Path,
    view: str,
    cache: Path,
    *,
    default_far: float,
    targets: Sequence[float],
    baseline: str | None,
    conflict_fpir: float = 1e-3,
    mismatch_far: float = 1e-2,
    folders_run: Path | None = None,
) -> Any:
    """Calibrate a model file's card on the calibration split: 1:1 thresholds (verify) at the measured FARs, the 1:N
    calibration (identify, enrolment checks), and for the record the evaluation split's 1:N table and the enrolment
    of every person of the shared data (one photo each, up to three, every photo) at the service's default checks,
    with, from ``folders_run`` (the JSON of a `folders` run of this model at ``conflict_fpir``), the same through
    ``facedb enroll``."""
    from embedding.card import ModelCard  # noqa: PLC0415
    from embedding.embedder import read_card  # noqa: PLC0415

    faces = load_view(cache, view)
    cal = fit_open_set(faces, conditions=condition_vectors(cache, view, faces))
    genuine = genuine_scores(faces, "calibration")
    fars = [f for f in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5) if f >= cal.measured_far]
    thresholds = {f"{far:.0e}".replace("e-0", "e-"): round(cal.threshold_at_far(far), 4) for far in fars}
    per_far = {
        label: {"threshold": t, "tar": round(float((genuine >= t).mean()), 4)} for label, t in thresholds.items()
    }
    evaluation = evaluate_view(faces, cal, sizes=SIZES, targets=targets)
    enrolment = {
        f"{photos or 'every'}_photos": {
            k: v
            for k, v in enrolment_run(
                faces, cal, split=None, conflict_fpir=conflict_fpir, mismatch_far=mismatch_far, photos=photos
            ).items()
            if k not in ("refusals", "warnings")
        }
        for photos in (1, 3, None)
    }
    through_cli = _folders_figures(folders_run, model, conflict_fpir) if folders_run else None
    baseline_rows: list[dict[str, Any]] = []
    if baseline is not None:
        base_faces = load_view(cache, baseline)
        baseline_rows = evaluate_view(base_faces, fit_open_set(base_faces), sizes=SIZES, targets=targets)["galleries"]
    card = read_card(model)
    default_label = f"{default_far:.0e}".replace("e-0", "e-")
    updated = ModelCard.model_validate(
        {
            **card.model_dump(mode="json"),
            "thresholds": thresholds,
            "default_threshold": thresholds[default_label],
            "default_threshold_far": default_far,
            "open_set": cal.model_dump(mode="json"),
            "metrics": {
                **{k: v for k, v in card.metrics.items() if k != "enrolment_facedb_enroll"},  # a run of the old card
                "calibration": {
                    "data": cal.source,
                    "genuine_pairs": int(genuine.size),
                    "per_far": per_far,
                    "by": f"python -m benchmarks.open_set calibrate {model.name} --view {view}",
                },
                "open_set_evaluation": {
                    "data": "benchmarks/open_set.py evaluation split: LFW folds 1-9 people with name hash not 0 mod 3, "
                    "CelebA subset, AT&T, Extended Yale B, Yale A; strangers leave-one-out",
                    "galleries": evaluation["galleries"],
                    "baseline": {"view": baseline, "galleries": baseline_rows} if baseline else None,
                },
                "enrolment": enrolment,
                **({"enrolment_facedb_enroll": through_cli} if through_cli else {}),
            },
            "notes": f"Verify: threshold {thresholds[default_label]} at FAR {default_label} (TAR "
            f"{per_far[default_label]['tar']} on the calibration split). Identify: thresholds set per gallery size "
            "for a target FPIR from `open_set` (embedding/openset.py).",
        }
    )
    if model.suffix.lower() == ".onnx":
        from embedding.onnx_embedder import load_onnx_model, write_onnx_card  # noqa: PLC0415

        write_onnx_card(load_onnx_model(model), updated, model)
    else:
        from embedding.checkpoint import replace_card  # noqa: PLC0415

        replace_card(model, model, updated)
    return updated


FOLDERS_FIGURES = (
    "model",
    "conflict_fpir",
    "identities",
    "people",
    "identities_enrolled",
    "identities_with_a_conflict_naming_someone_else",
    "wrong_conflict_rate",
    "identities_warned",
    "warning_rate",
    "reenrolled",
    "reenrol_caught",
    "reenrol_named",
    "first_summary",
)


def _folders_figures(path: Path, model: Path, conflict_fpir: float) -> dict[str, Any]:
    """The figures of a `folders` run's JSON that a card records; ValueError when the run is of another model or
    another conflict FPIR (or from before runs recorded them)."""
    run = json.loads(path.read_text())
    if run.get("model") != model.name or run.get("conflict_fpir") != conflict_fpir:
        raise ValueError(
            f"{path} is a folders run of {run.get('model')} at conflict FPIR {run.get('conflict_fpir')}, "
            f"not of {model.name} at {conflict_fpir}"
        )
    return {k: run[k] for k in FOLDERS_FIGURES}


# --- http: one gallery through a running server ---------------------------------------------------------


def _people(seed: int, split: str | None) -> list[tuple[str, list[Path]]]:
    """(qualified name, photos) of every person of one split (None: of the whole shared data), shuffled."""
    people: dict[str, list[Path]] = {}
    for ds in DATASETS:
        if ds.root.is_dir():
            for name, path in list_images(ds):
                ident = SAME_PERSON.get(name, name)
                if split is None or split_of(ident) == split:
                    people.setdefault(ident, []).append(path)
    names = sorted(people)
    order = np.random.default_rng(seed).permutation(len(names))
    return [(names[i], people[names[i]]) for i in order]


def http(
    model: Path | None,
    size: int,
    strangers: int,
    reenrol: int,
    seed: int = 0,
    everyone: bool = False,
    photos_per_person: int = 1,
) -> dict[str, Any]:
    """Enrol ``size`` people (each with their first ``photos_per_person`` photos that pass the quality gates, one
    request each, default settings; a person with several photos keeps their last one back), identify up to two
    later photos of each and one photo of ``strangers`` people not enrolled, then enrol ``reenrol`` of them again
    under new ids with a later photo that passes the gates (caught: refused as a conflict naming them; named: caught
    or accepted with a possible_duplicate warning naming them).

    ``everyone``: enrol every person of the shared data (both splits), identify nobody, and enrol again everyone
    who has a later photo that passes the gates (the issue's "enrol every identity" measurement)."""
    import httpx  # noqa: PLC0415

    from benchmarks.identify_latency import fresh_database, running_server, server_headers  # noqa: PLC0415

    people = _people(seed, None if everyone else "evaluation")
    gallery, outsiders = (people, []) if everyone else (people[:size], people[size : size + strangers])
    probes, reenrol = (0, len(people)) if everyone else (2, reenrol)
    with tempfile.TemporaryDirectory(prefix="facedb-open-set-") as tmp_s:
        tmp = Path(tmp_s)
        env = fresh_database(tmp)
        if model is not None:
            env["FACEDB_MODEL_PATH"] = str(model)
        base = "/v1/galleries/default"
        with (
            running_server(os.environ | env, tmp / "server.log", 180) as (url, _),
            httpx.Client(base_url=url + base, timeout=120, trust_env=False, headers=server_headers(env)) as c,
        ):

            def post_photo(path: str, photo: Path) -> httpx.Response:
                return c.post(path, files={"image": (photo.name, photo.read_bytes())})

            refused: dict[str, int] = {}
            conflicts: list[dict[str, Any]] = []
            enrolled: dict[str, tuple[int, int]] = {}  # person -> (identity id, index of the last photo enrolled)
            refused_people = warned_people = 0
            for name, photos in gallery:
                ident = c.post("/identities", json={"external_id": name}).json()["id"]
                codes: list[str] = []
                accepted = 0
                warned = False
                limit = len(photos) if photos_per_person == 1 else max(len(photos) - 1, 1)
                for k, photo in enumerate(photos[:limit]):  # the first photos that pass the quality gates
                    r = post_photo(f"/identities/{ident}/faces", photo)
                    if r.status_code == 201:
                        enrolled[name] = (ident, k)
                        accepted += 1
                        warned |= bool(r.json()["warnings"])
                        if accepted == photos_per_person:
                            break
                        continue
                    rejected = r.json()["error"].get("details", {}).get("rejected", [])
                    codes = [x["code"] for x in rejected]
                    for rej in rejected:
                        refused[rej["code"]] = refused.get(rej["code"], 0) + 1
                        if rej["code"] == "identity_conflict":
                            conflicts.append({"person": name, "matched": rej["other_identity"], "score": rej["score"]})
                    if "identity_conflict" in codes:
                        break
                refused_people += "identity_conflict" in codes
                warned_people += warned
            mated: list[tuple[bool, float, bool]] = []  # (top is right, top score, matched right)
            stranger: list[tuple[float, bool]] = []  # (top score, matched anyone)
            last: dict[str, Any] = {}
            for name, photos in gallery:
                if name not in enrolled:
                    continue
                ident, k = enrolled[name]
                for photo in photos[k + 1 : k + 1 + probes]:
                    last = post_photo("/identify", photo).json()
                    top = last["candidates"][0] if last["candidates"] else None
                    right = top is not None and top["identity"]["id"] == ident
                    match = last["match"]
                    mated.append((right, top["score"] if top else -1.0, match is not None and right))
            for _, photos in outsiders:
                body = post_photo("/identify", photos[0]).json()
                top = body["candidates"][0] if body["candidates"] else None
                stranger.append((top["score"] if top else -1.0, body["match"] is not None))
            caught = named = tried = 0
            for name, photos in gallery:
                if tried == reenrol:
                    break
                if name not in enrolled or len(photos) <= enrolled[name][1] + 1:
                    continue
                ident = c.post("/identities", json={"external_id": name + "#again"}).json()["id"]
                for photo in photos[enrolled[name][1] + 1 :]:  # a later photo that passes the quality gates
                    r = post_photo(f"/identities/{ident}/faces", photo)
                    rejected = r.json()["error"]["details"]["rejected"] if r.status_code == 422 else []
                    if r.status_code == 201 or any(x["code"] == "identity_conflict" for x in rejected):
                        tried += 1
                        notes = rejected + (r.json()["warnings"] if r.status_code == 201 else [])
                        hit = [x["other_identity"] == enrolled[name][0] for x in notes]
                        caught += any(h and x["code"] == "identity_conflict" for h, x in zip(hit, notes, strict=True))
                        named += any(hit)
                        break
    if everyone:
        return {
            "people": len(gallery),
            "photos_per_person": photos_per_person,
            "enrolled": len(enrolled),
            "refused": refused,
            "people_refused_as_conflicts": refused_people,
            "refusal_rate_conflict": round(refused_people / len(gallery), 4),
            "conflicts": conflicts,
            "people_warned": warned_people,
            "warning_rate": round(warned_people / len(gallery), 4),
            "reenrolled": tried,
            "reenrol_caught": round(caught / max(tried, 1), 4),
            "reenrol_named": round(named / max(tried, 1), 4),
        }
    s_scores = np.array([s for s, _ in stranger])
    outcome = Outcome(
        mate_rank=np.array([0 if right else -1 for right, _, _ in mated]),
        mate_top=np.array([score for _, score, _ in mated]),
        stranger=s_scores,
    )
    return {
        "people": size,
        "enrolled": len(enrolled),
        "refused": refused,
        "people_refused_as_conflicts": refused_people,
        "refusal_rate_conflict": round(refused_people / size, 4),
        "conflicts": conflicts[:20],
        "mated_probes": len(mated),
        "strangers": len(stranger),
        "rank1": round(float(np.mean([m[0] for m in mated])), 4),
        "default_decision": {
            "threshold": last.get("threshold"),
            "threshold_source": last.get("threshold_source"),
            "target_fpir": last.get("target_fpir"),
            "gallery_size": last.get("gallery_size"),
            "fpir": round(float(np.mean([m for _, m in stranger])), 4),
            "fnir": round(1 - float(np.mean([m[2] for m in mated])), 4),
        },
        "fnir_at_fpir": {
            f"{f:g}": round(fnir_at(outcome, threshold_at_far(s_scores, f)), 4) for f in FPIRS if f * len(s_scores) >= 1
        },
        "people_warned": warned_people,
        "warning_rate": round(warned_people / size, 4),
        "reenrolled": tried,
        "reenrol_caught": round(caught / max(tried, 1), 4),
        "reenrol_named": round(named / max(tried, 1), 4),
    }


# --- folders: the shared data through `facedb enroll`, as the README enrols a folder ----------------------------


@dataclass(frozen=True)
class CliNote:
    """One line that `facedb enroll` printed about a photo (``folder/file: code: message``): its folder, its code and
    the external id of the identity its message names (a conflict's or a warning's other identity, a mismatch's
    own: the folder it was enrolled from), or None."""

    folder: str
    code: str
    other: str | None


def parse_enrol_output(stderr: str) -> list[CliNote]:
    """The ``rejected ...`` and ``warning ...`` lines of `facedb enroll` (`service.cli.enroll`)."""
    notes = []
    for line in stderr.splitlines():
        kind, _, rest = line.partition(" ")
        if kind not in ("rejected", "warning") or ": " not in rest:
            continue
        where, _, tail = rest.partition(": ")
        code, _, message = tail.partition(": ")
        other = None
        if " identity " in message and "(" in message:
            other = message.split(" identity ", 1)[1].split("(", 1)[1].split(")", 1)[0]
        notes.append(CliNote(folder=where.rsplit("/", 1)[0], code=code, other=other))
    return notes


@dataclass(frozen=True)
class FolderTrees:
    """Two trees of links to the shared data, one folder per identity named ``<set>.<folder>``: ``first`` holds every
    photo but each person's last (sorted) one, ``again`` those last photos, each in a folder of its own
    (``<folder>.again``); ``person``: the person each first folder is (`SAME_PERSON` merges the LFW folders that hold
    one person under two names); ``photos``: how many photos each first folder holds; ``held``: the first folders
    whose last photo is held back (those with two or more)."""

    first: Path
    again: Path
    person: dict[str, str]
    photos: dict[str, int]
    held: set[str]


def folder_trees(tmp: Path) -> FolderTrees:
    """Lay out `FolderTrees` under ``tmp``."""
    trees = FolderTrees(tmp / "first", tmp / "again", {}, {}, set())
    for ds in DATASETS:
        if not ds.root.is_dir():
            continue
        photos: dict[str, list[Path]] = {}
        for name, path in list_images(ds):
            photos.setdefault(name, []).append(path)
        for name, paths in photos.items():
            folder = name.replace("/", ".")
            trees.person[folder] = SAME_PERSON.get(name, name)
            keep = paths[:-1] if len(paths) > 1 else paths
            trees.photos[folder] = len(keep)
            (trees.first / folder).mkdir(parents=True)
            for path in keep:
                (trees.first / folder / path.name).symlink_to(path)
            if len(paths) > 1:
                trees.held.add(folder)
                (trees.again / f"{folder}.again").mkdir(parents=True)
                (trees.again / f"{folder}.again" / paths[-1].name).symlink_to(paths[-1])
    return trees


def folders() -> dict[str, Any]:
    """Every identity of the shared data enrolled with ``facedb enroll DIR`` (local mode, a fresh SQLite, default
    settings and model): each identity's photos in one request, as the README enrols AT&T, each person's last photo
    kept back; then those photos enrolled with ``facedb enroll`` again, each under a new id (`score_folders`)."""
    import subprocess  # noqa: PLC0415

    from benchmarks.identify_latency import fresh_database  # noqa: PLC0415
    from service.settings import Settings  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="facedb-folders-") as tmp_s:
        tmp = Path(tmp_s)
        trees = folder_trees(tmp)
        env = os.environ | fresh_database(tmp)
        runs: dict[str, dict[str, Any]] = {}
        for key, tree in (("first", trees.first), ("again", trees.again)):
            started = time.perf_counter()
            command = [sys.executable, "-m", "service", "enroll", str(tree)]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"facedb enroll {tree} failed ({done.returncode}): {done.stderr[-2000:]}")
            runs[key] = {
                "notes": parse_enrol_output(done.stderr),
                "summary": done.stdout.strip(),
                "seconds": round(time.perf_counter() - started),
            }
    scores = score_folders(runs["first"]["notes"], runs["again"]["notes"], trees)
    settings = Settings()  # as the command resolved them: FACEDB_ environment, .env, defaults
    scores |= {"model": settings.resolved_model_path.name, "conflict_fpir": settings.conflict_fpir}
    printed = {f"{key}_{part}": run[part] for key, run in runs.items() for part in ("summary", "seconds")}
    notes = {f"{key}_notes": [dataclasses.astuple(n) for n in run["notes"]] for key, run in runs.items()}
    return scores | printed | notes


def score_folders(first: Sequence[CliNote], again: Sequence[CliNote], trees: FolderTrees) -> dict[str, Any]:
    """The figures of a `folders` run from what `facedb enroll` printed: the first enrolment's ``first`` notes and
    the re-enrolment's ``again`` notes, for the people of ``trees``. A conflict is a mistake when it names someone
    else (not the same person filed under another name). A person is enrolled again (folder
    ``<folder>.again``, one photo) when a face of theirs was accepted the first time and the photo passes the
    quality gates; caught when it is refused as a conflict naming them, named when a refusal or a possible_duplicate
    warning does."""
    codes: dict[str, int] = {}
    refused: dict[str, int] = {}
    for n in first:
        if n.code != "possible_duplicate":
            codes[n.code] = codes.get(n.code, 0) + 1
            refused[n.folder] = refused.get(n.folder, 0) + 1
    person = trees.person
    enrolled = {f for f, n in trees.photos.items() if n > refused.get(f, 0)}
    conflicts = [n for n in first if n.code == "identity_conflict"]
    wrong_pairs = sorted({(n.folder, n.other) for n in conflicts if person.get(n.other or "") != person[n.folder]})
    wrong = {folder for folder, _ in wrong_pairs}
    warned = {n.folder for n in first if n.code == "possible_duplicate"}
    gated = {n.folder for n in again if n.code not in ("identity_conflict", "possible_duplicate")}
    tried = [f"{f}.again" for f in sorted(enrolled & trees.held) if f"{f}.again" not in gated]
    by_folder: dict[str, list[CliNote]] = {}
    for n in again:
        by_folder.setdefault(n.folder, []).append(n)

    def names_own(n: CliNote, folder: str) -> bool:
        return n.other is not None and person.get(n.other) == person[folder.removesuffix(".again")]

    caught = [f for f in tried if any(n.code == "identity_conflict" and names_own(n, f) for n in by_folder.get(f, []))]
    named = [f for f in tried if any(names_own(n, f) for n in by_folder.get(f, []))]
    return {
        "identities": len(person),
        "people": len(set(person.values())),
        "identities_enrolled": len(enrolled),
        "rejected": codes,
        "identities_with_a_conflict_naming_someone_else": len(wrong),
        "wrong_conflict_rate": round(len(wrong) / max(len(person), 1), 5),
        "wrong_conflicts": wrong_pairs,
        "identities_with_a_conflict_naming_themselves": sorted({n.folder for n in conflicts} - wrong),
        "identities_warned": len(warned),
        "warning_rate": round(len(warned) / max(len(person), 1), 5),
        "reenrolled": len(tried),
        "reenrol_caught": round(len(caught) / max(len(tried), 1), 4),
        "reenrol_named": round(len(named) / max(len(tried), 1), 4),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("embed", help="detect and embed every photo of the shared data (cached)")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--models", nargs="+", default=[s.name for s in EMBEDDERS])
    p.add_argument("--datasets", nargs="+", default=[d.name for d in DATASETS])
    p = sub.add_parser("library", help="every gallery size, from the cached embeddings")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--views", nargs="+", default=list(VIEWS))
    p.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    p.add_argument("--targets", nargs="+", type=float, default=[1e-2, 1e-3])
    p.add_argument("--conflict-fpir", type=float, default=1e-3)
    p.add_argument("--mismatch-far", type=float, default=1e-2)
    p.add_argument("--json", type=Path)
    p = sub.add_parser("http", help="one gallery through a running server (HTTP API, default settings)")
    p.add_argument("--model", type=Path, help="model file (default: the service's default model)")
    p.add_argument(
        "--baseline",
        type=Path,
        default=REPO / "embedding/models/dlib_resnet.pt",
        help="a model measured the same way after it, in its own fresh server ('none' to skip)",
    )
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--strangers", type=int, default=1000)
    p.add_argument("--reenrol", type=int, default=300)
    p.add_argument("--everyone", action="store_true", help="enrol every person of the shared data (no probes)")
    p.add_argument(
        "--photos", type=int, default=1, help="photos enrolled per person (a person with several keeps one back)"
    )
    p.add_argument("--json", type=Path)
    p = sub.add_parser("folders", help="every identity of the shared data through `facedb enroll`, then again")
    p.add_argument("--json", type=Path)
    p = sub.add_parser("calibrate", help="write a model's thresholds and 1:N calibration into its card")
    p.add_argument("model", type=Path)
    p.add_argument("--view", required=True, help="the view the model is served as, e.g. sface or dlib:flip")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--default-far", type=float, default=1e-3)
    p.add_argument("--baseline", default="dlib:flip", help="a view measured beside it for the card")
    p.add_argument("--targets", nargs="+", type=float, default=[1e-2, 1e-3])
    p.add_argument("--folders", type=Path, help="the JSON of a `folders` run of this model, recorded in the card")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        sys.exit(f"the shared data is absent ({DATA}); nothing to measure")
    if args.command == "embed":
        embed(args.cache, workers=args.workers, models=args.models, datasets=args.datasets)
    elif args.command == "library":
        results = library(
            args.cache,
            views=args.views,
            sizes=args.sizes,
            targets=args.targets,
            conflict_fpir=args.conflict_fpir,
            mismatch_far=args.mismatch_far,
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    elif args.command == "http":
        runs = {"model": args.model} | ({"baseline": args.baseline} if str(args.baseline) != "none" else {})
        results = {}
        for key, model in runs.items():
            results[key] = http(
                model, args.size, args.strangers, args.reenrol, everyone=args.everyone, photos_per_person=args.photos
            )
            shown = {k: v for k, v in results[key].items() if k != "conflicts"}
            print(json.dumps({key: str(model or "default"), **shown}, indent=1))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    elif args.command == "folders":
        result = folders()
        print(json.dumps({k: v for k, v in result.items() if not k.endswith(("_notes", "_conflicts"))}, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    elif args.command == "calibrate":
        card = write_card(
            args.model,
            args.view,
            args.cache,
            default_far=args.default_far,
            targets=args.targets,
            baseline=args.baseline,
            folders_run=args.folders,
        )
        print(f"wrote {args.model}: {card.name}@{card.version}, thresholds {card.thresholds}")


if __name__ == "__main__":
    main()
