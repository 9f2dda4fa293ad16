"""Score changes tried on `open_set.py`'s cached embeddings and not kept: the figures behind benchmarks/README.md.

- ``projections``: a supervised linear map of the vectors (within-class covariance normalisation, WCCN, and
  LDA), learned on one half of the *calibration* split's people; the 1:N calibration is fitted on the other half
  and every figure comes from the evaluation split, against the raw vectors calibrated the same way.
- ``identity-scores``: how a person with several faces is scored against a face: the normalised mean of their
  faces (the service's default), their best face, the mean of all or of the top-k cosines, and means weighted by
  the detector's score or by how typical a face is of its person. An order-free screen (everyone enrolled with
  every photo but their last at once; a person counts as refused when one of their photos scores at or above the
  bar against someone else, and the bar is set for each rule at the same share of people refused), so only a
  comparison between rules, not the service's figures.
- ``conditions``: how far different people's scores rise when photos are grey, or taken from farther away (fewer
  px between the eyes: AT&T's 92x112 faces have 33, LFW's 41): the calibration split's photos re-embedded from the
  cached landmarks (`open_set.in_condition`), their different-person score at FAR 1e-3, 1e-4 and 1e-5 against the
  colour photos' (the 1:N bars rest on that tail). Grey moved it enough for the card to carry a grey table
  (`open_set.condition_vectors`); resolution down to 20 px did not.
- ``templates``: the different-person score tail of a person scored by the normalised mean of k of their faces, as
  identify and the conflict check score a person, against the single photos the card's table is measured on
  (calibration split); then enrolment of all the data with the conflict bar set three ways: for the gallery's
  faces (served), for its people, and per person from the tail of a mean of as many faces as they have.

    python -m benchmarks.open_set_ablations projections [--view dlib_sface]
    python -m benchmarks.open_set_ablations identity-scores [--view dlib_sface]
    python -m benchmarks.open_set_ablations conditions
    python -m benchmarks.open_set_ablations templates
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import open_set
from benchmarks.open_set import CACHE, EnrolmentPlan, Faces
from embedding.train.evaluation import cross_scores

CONFLICT_FPIRS = (1e-3, 2e-3, 3e-3, 5e-3)
REFUSED_SHARES = (0.005, 0.01, 0.02)


# --- projections ------------------------------------------------------------------------------------------


def training_half(faces: Faces) -> Faces:
    """The faces with half of the calibration split's people (by a salted name hash) moved to split "train",
    which `open_set.fit_open_set` and the evaluation never read."""
    split = faces.split.copy()
    for i, (name, sp) in enumerate(zip(faces.identity, faces.split, strict=True)):
        if sp == "calibration" and int(hashlib.sha256(f"ablation:{name}".encode()).hexdigest()[:8], 16) % 2 == 0:
            split[i] = "train"
    return dataclasses.replace(faces, split=split)


@dataclass(frozen=True)
class Scatter:
    """Class statistics of training vectors (D,): their mean, within-class and between-class covariance (D, D),
    both from the classes with at least two vectors."""

    mean: np.ndarray
    within: np.ndarray
    between: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, labels: np.ndarray) -> Scatter:
        """From vectors float (N, D) and their class labels (N,)."""
        x = np.asarray(x, dtype=np.float64)
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        centres = np.zeros((len(classes), x.shape[1]))
        np.add.at(centres, inverse, x)
        centres /= counts[:, None]
        several = counts[inverse] >= 2
        deviations = x[several] - centres[inverse][several]
        spread = centres[counts >= 2] - x.mean(0)
        return cls(x.mean(0), deviations.T @ deviations / len(deviations), spread.T @ spread / len(spread))


def _inverse_sqrt(m: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(m)
    return np.asarray((vectors / np.sqrt(values)) @ vectors.T)


def projection(scatter: Scatter, kind: str, *, shrink: float, dims: int | None = None) -> np.ndarray:
    """A (D, d) map: ``wccn`` whitens the within-class covariance (shrunk toward ``shrink`` x its mean variance);
    ``lda`` then keeps the ``dims`` directions of most between-class variance."""
    d = len(scatter.within)
    white = _inverse_sqrt(scatter.within + shrink * np.trace(scatter.within) / d * np.eye(d))
    if kind == "wccn":
        return white
    values, vectors = np.linalg.eigh(white @ scatter.between @ white)
    return np.asarray(white @ vectors[:, np.argsort(values)[::-1][: dims or d]])


def projected(faces: Faces, w: np.ndarray, centre: np.ndarray | None) -> Faces:
    """The faces mapped by ``w`` (after subtracting ``centre``) and renormalised as one vector (no parts)."""
    y = (faces.x.astype(np.float64) - (0 if centre is None else centre)) @ w
    y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    y[~faces.found] = 0
    return dataclasses.replace(faces, x=y.astype(np.float32), parts=None)


def measure(faces: Faces) -> dict[str, object]:
    """Calibrated on the calibration split's people left in it; FNIR at FPIR 1% on the whole evaluation split (one
    photo, three by their mean) and enrolment of the evaluation split's people at each conflict FPIR."""
    cal = open_set.fit_open_set(faces)
    rows = open_set.evaluate_view(faces, cal, sizes=[], targets=[1e-2])["galleries"]
    out: dict[str, object] = {
        f"fnir_at_fpir_1e-2_{r['photos_per_person']}_{r['identity_score']}": r["fnir_at_fpir"]["0.01"]["fnir"]
        for r in rows
    }
    for photos in (1, 3, None):
        runs = [
            open_set.enrolment_run(faces, cal, split="evaluation", conflict_fpir=cf, mismatch_far=1e-2, photos=photos)
            for cf in CONFLICT_FPIRS
        ]
        out[f"enrol_{photos or 'every'}"] = {
            f"{cf:g}": f"{r['refusal_rate']:.2%} / {r['reenrol_caught']:.1%}"
            for cf, r in zip(CONFLICT_FPIRS, runs, strict=True)
        }
    return out


def projections(view: str, cache: Path) -> dict[str, object]:
    """Raw vectors against WCCN and LDA maps, each with the same training half and calibration half."""
    faces = training_half(open_set.load_view(cache, view))
    train = (faces.split == "train") & faces.found
    scatter = Scatter.of(faces.x[train], faces.identity[train])
    variants = {
        "raw": faces,
        "wccn, not centred, no shrinkage": projected(faces, projection(scatter, "wccn", shrink=0.0), None),
        "wccn, centred, shrinkage 0.1": projected(faces, projection(scatter, "wccn", shrink=0.1), scatter.mean),
        "wccn, centred, shrinkage 1": projected(faces, projection(scatter, "wccn", shrink=1.0), scatter.mean),
        "lda 128, shrinkage 0.1": projected(faces, projection(scatter, "lda", shrink=0.1, dims=128), scatter.mean),
        "lda 200, shrinkage 1": projected(faces, projection(scatter, "lda", shrink=1.0, dims=200), scatter.mean),
    }
    results: dict[str, object] = {"training_photos": int(train.sum())}
    for name, variant in variants.items():
        results[name] = measure(variant)
        print(name, results[name], flush=True)
    return results


# --- identity scores --------------------------------------------------------------------------------------


def person_scores(
    queries: np.ndarray,
    x: np.ndarray,
    bounds: np.ndarray,
    rule: str,
    *,
    weights: np.ndarray | None = None,
    parts: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Scores float (Q, P) of queries (Q, D) against P people whose faces are the rows of ``x`` (N, D) between
    consecutive ``bounds`` (P + 1,): ``mean`` (the normalised mean, a fusion's part by part, of the faces weighted
    by ``weights`` (N,), default equal), ``best``, ``avgcos`` (the mean cosine) or ``topK`` (the mean of the K best
    cosines)."""
    if rule == "mean":
        w = np.ones(len(x)) if weights is None else weights
        sums = np.add.reduceat(x.astype(np.float64) * w[:, None], bounds[:-1], axis=0)
        return np.asarray(queries @ open_set._unit(sums, parts).T)
    cosines = queries @ x.T
    out = np.empty((len(queries), len(bounds) - 1), dtype=np.float32)
    for p in range(len(bounds) - 1):
        block = cosines[:, bounds[p] : bounds[p + 1]]
        if rule == "best":
            out[:, p] = block.max(1)
        elif rule == "avgcos":
            out[:, p] = block.mean(1)
        else:
            k = min(int(rule.removeprefix("top")), block.shape[1])
            out[:, p] = -np.partition(-block, k - 1, axis=1)[:, :k].mean(1)
    return out


def person_bounds(labels: np.ndarray) -> np.ndarray:
    """Where each person's rows start, and the end, int (P + 1,), for person numbers (N,) grouped by person."""
    return np.flatnonzero(np.r_[True, labels[1:] != labels[:-1], True])


def screen(faces: Faces, plan: EnrolmentPlan, rule: str, weights: np.ndarray | None) -> dict[str, str]:
    """Re-enrolments caught at each share of people refused (`REFUSED_SHARES`), order-free, for one rule, everyone
    enrolled at once as ``plan`` says."""
    x = faces.x[plan.rows]
    bounds = person_bounds(plan.labels)
    people = len(plan.names)
    worst = np.full(people, -2.0)
    for start in range(0, len(x), 2048):
        scores = person_scores(x[start : start + 2048], x, bounds, rule, weights=weights, parts=faces.parts)
        own = plan.labels[start : start + 2048]
        scores[np.arange(len(own)), own] = -2.0
        np.maximum.at(worst, own, scores.max(1))
    mine = np.array(list(plan.held))
    scores = person_scores(faces.x[list(plan.held.values())], x, bounds, rule, weights=weights, parts=faces.parts)
    own_score = scores[np.arange(len(mine)), mine]
    out = {}
    for share in REFUSED_SHARES:
        bar = float(np.quantile(worst, 1 - share))
        caught = float(((scores.argmax(1) == mine) & (own_score >= bar)).mean())
        out[f"{share:.1%} refused"] = f"bar {bar:.3f}, caught {caught:.1%}"
    return out


def identity_scores(view: str, cache: Path) -> dict[str, object]:
    """Every rule of `person_scores` through `screen`, with the weights tried for the mean."""
    faces = open_set.load_view(cache, view)
    plan = open_set.enrolment_plan(faces, split=None, photos=None)
    bounds = person_bounds(plan.labels)
    detector = np.concatenate(
        [np.load(open_set.cache_file(cache, ds.name, "faces"))["score"] for ds in open_set.DATASETS]
    )[plan.rows].astype(np.float64)
    x = faces.x[plan.rows].astype(np.float64)
    sums = np.add.reduceat(x, bounds[:-1], axis=0)
    own_others = open_set._unit(sums[plan.labels] - x, faces.parts, np.float64)  # the person's mean without it
    typical = np.einsum("ij,ij->i", own_others, x)
    typical[np.diff(bounds)[plan.labels] == 1] = 1.0
    rules: dict[str, tuple[str, np.ndarray | None]] = {
        "mean": ("mean", None),
        "mean, weighted by detector score": ("mean", detector),
        "mean, weighted by detector score^4": ("mean", detector**4),
        "mean, weighted by exp(5 x typicality)": ("mean", np.exp(5 * typical)),
        "mean, weighted by exp(10 x typicality)": ("mean", np.exp(10 * typical)),
        "best face": ("best", None),
        "mean cosine": ("avgcos", None),
        "mean of the top 2 cosines": ("top2", None),
        "mean of the top 3 cosines": ("top3", None),
        "mean of the top 5 cosines": ("top5", None),
    }
    results: dict[str, object] = {"photos": len(plan.rows), "held_back": len(plan.held)}
    for name, (rule, weights) in rules.items():
        results[name] = screen(faces, plan, rule, weights)
        print(name, results[name], flush=True)
    return results


# --- conditions -------------------------------------------------------------------------------------------


def impostor_tail(x: np.ndarray, identity: np.ndarray, fars: Sequence[float] = (1e-3, 1e-4, 1e-5)) -> dict[str, float]:
    """Different-person score at each FAR among unit rows ``x`` (N, D) of people ``identity`` (N,)."""
    impostors = np.sort(cross_scores(x, identity)[1])[::-1]
    return {f"{far:g}": round(float(impostors[int(far * len(impostors))]), 4) for far in fars}


RESOLUTIONS = (32.0, 26.0, 20.0)
"""Inter-eye distances (px) the `conditions` experiment shrinks the calibration split's photos to."""


def conditions(view: str, cache: Path) -> dict[str, object]:
    """The different-person score tail of the calibration split's photos (LFW, up to
    `open_set.PHOTOS_PER_STRANGER` per person) through the served model ``view``, as taken (colour) and as a grey
    camera and/or one farther away would take them (`open_set.in_condition`: `RESOLUTIONS` px between the eyes)."""
    faces = open_set.load_view(cache, view)
    names, rows = open_set._by_identity(faces, "calibration")
    photos = open_set.probe_photos(faces, names, rows)
    assert faces.photo is not None  # load_view measures every cached photo
    spec = next(s for s in open_set.EMBEDDERS if s.name == view)
    results: dict[str, object] = {
        "photos": len(photos),
        "inter_eye_px_percentiles_5_25_50_75_95": np.percentile(faces.photo.inter_eye_px[photos], [5, 25, 50, 75, 95])
        .round(1)
        .tolist(),
    }
    print(results, flush=True)

    def report(name: str, x: np.ndarray) -> None:
        results[name] = impostor_tail(x, faces.identity[photos])
        print(name, results[name], flush=True)

    # as taken, and in grey: the view's cached vectors and the card's cached grey ones
    report("colour", faces.x[photos])
    grey = open_set.condition_vectors(cache, view, faces)
    if grey is not None:
        report("grey", grey["grey"])
    for g, px in [(True, px) for px in RESOLUTIONS] + [(False, px) for px in RESOLUTIONS[1:]]:
        x = open_set.embed_in_condition(spec, cache, photos, grey=g, inter_eye_px=px)
        report(("grey" if g else "colour") + f", {px:g} px", x)
    return results


# --- templates --------------------------------------------------------------------------------------------

TEMPLATE_SIZES = (1, 2, 3, 5, 8)
"""Faces per mean template whose different-person tail `templates` measures (people with more use the last)."""
TAIL_FARS = (1e-3, 1e-4, 1e-5, 1e-7)


def mean_templates(faces: Faces, names: Sequence[str], rows: dict[str, list[int]], k: int) -> tuple[Any, Any]:
    """Unit means (T, D) (a fusion's part by part) of consecutive, disjoint runs of ``k`` photos with a face of each
    person of ``names`` (as many runs as their photos allow; none for a person with fewer), and each one's person
    (T,) str."""
    sums, who = [], []
    for name in names:
        found = [r for r in rows[name] if faces.found[r]]
        for start in range(0, len(found) - k + 1, k):
            sums.append(faces.x[found[start : start + k]].astype(np.float64).sum(0))
            who.append(name)
    if not sums:
        return np.empty((0, faces.x.shape[1]), dtype=np.float32), np.array([], dtype=str)
    return open_set._unit(np.stack(sums), faces.parts), np.array(who)


def template_tables(faces: Faces) -> dict[int, Any]:
    """`TEMPLATE_SIZES` k -> an `embedding.openset.OpenSetCalibration` whose 1:1 table is the different-person tail
    of k-face mean templates of the calibration split's people against its photos (`open_set.probe_photos`, the
    card's strangers), measured and fitted as the card's own (`open_set.far_table`). k = 1 takes every photo of a
    person, not only the card's first five, so it reads a little above the card's table (dlib_sface: 0.0004, 0.0017,
    0.0047 at FAR 1e-3, 1e-4, 1e-5); `per_person_bars` takes only the shifts of k > 1 from it."""
    from embedding.openset import OpenSetCalibration  # noqa: PLC0415

    names, rows = open_set._by_identity(faces, "calibration")
    photos = open_set.probe_photos(faces, names, rows)
    out = {}
    for k in TEMPLATE_SIZES:
        templates, who = mean_templates(faces, names, rows, k)
        scores = templates @ faces.x[photos].T
        impostors = scores[who[:, None] != faces.identity[photos][None, :]]
        table, measured = open_set.far_table(impostors)
        out[k] = OpenSetCalibration(far_thresholds=table, comparisons_per_face={"1": 1.0}, measured_far=measured)
    return out


def per_person_bars(cal: Any, tables: dict[int, Any], people: int, faces_each: np.ndarray, fpir: float) -> Any:
    """float (P,): each person's conflict bar when every person is one comparison at the FAR that makes ``fpir``
    over ``people`` (with the card's k), read off the tail of a mean of as many faces as they have (``faces_each``
    (P,); `TEMPLATE_SIZES` below it), shifted as the card's ``cal`` (a photo condition's) is from the colour table."""
    far = -math.expm1(math.log1p(-fpir) / cal.comparisons(max(people, 1)))
    base, single = cal.threshold_at_far(far), tables[1].threshold_at_far(far)
    shift = {k: t.threshold_at_far(far) - single for k, t in tables.items()}
    sizes = np.array(TEMPLATE_SIZES)
    return np.array([base + shift[int(sizes[sizes <= max(n, 1)].max())] for n in faces_each])


def enrolment_with_bars(faces: Faces, cal: Any, tables: dict[int, Any], *, photos: int | None, bar: str) -> str:
    """`open_set.enrolment_run`'s protocol (all the data, in order, people scored by their mean; conflicts only) with
    the conflict bar set for the gallery's ``faces`` (served), its ``people``, or ``per-person`` (`per_person_bars`,
    checked against the five best-scoring people): people refused and held-back photos caught."""
    fpir = 1e-3
    plan = open_set.enrolment_plan(faces, split=None, photos=photos)
    conditions = faces.conditions()
    x, lab = faces.x[plan.rows], plan.labels
    means = open_set.PersonMeans.from_sums(np.zeros((len(plan.names), x.shape[1])), faces.parts)
    count = np.zeros(len(plan.names), dtype=int)

    def clash(face: np.ndarray, condition: str, own: int) -> int:
        """The person ``face`` is refused as (-1: none), the gallery as it stands."""
        scores = np.where(means.enrolled, means.means @ face, -2.0)
        if own >= 0:
            scores[own] = -2.0
        top = np.argsort(scores)[::-1][:5]
        top = top[scores[top] > -2.0]
        c = cal.under(condition or None)
        if bar == "per-person":
            bars = per_person_bars(c, tables, int(means.enrolled.sum()), count[top], fpir)
        else:
            bars = np.full(len(top), c.threshold(int(count.sum() if bar == "faces" else means.enrolled.sum()), fpir))
        over = top[scores[top] >= bars]
        return int(over[0]) if len(over) else -1

    refused = set()
    for i, row in enumerate(plan.rows):
        if clash(x[i], str(conditions[row]), int(lab[i])) >= 0:
            refused.add(int(lab[i]))
            continue
        means.add(int(lab[i]), x[i])
        count[lab[i]] += 1
    tried = [k for k in plan.held if count[k] > 0]
    caught = sum(clash(faces.x[plan.held[k]], str(conditions[plan.held[k]]), -1) == k for k in tried)
    people = len(plan.names)
    return f"refused {len(refused)} of {people} ({len(refused) / people:.2%}), caught {caught / max(len(tried), 1):.1%}"


def templates(view: str, cache: Path) -> dict[str, object]:
    """`template_tables` (score at `TAIL_FARS`, the last fitted where not measured, and at the colour table's
    thresholds for FAR 1e-3 and 1e-4 the FAR as a multiple of it: what a mean of k faces is worth in single-photo
    comparisons), then `enrolment_with_bars` with one photo, up to three, and every photo per person."""
    from embedding.embedder import read_card  # noqa: PLC0415

    faces = open_set.load_view(cache, view)
    spec = next(s for s in open_set.EMBEDDERS if s.name == view)
    cal = read_card(spec.path).open_set
    tables = template_tables(faces)
    results: dict[str, object] = {}
    for k, table in tables.items():
        row = {f"{far:g}": round(table.threshold_at_far(far), 4) for far in TAIL_FARS}
        for far in (1e-3, 1e-4):
            at = tables[1].threshold_at_far(far)
            row[f"x at {far:g}"] = round(table.fpir(1, at) / far, 2)
        results[f"mean of {k}"] = row | {"measured to": table.measured_far}
        print(f"mean of {k}", results[f"mean of {k}"], flush=True)
    for photos, plan in ((1, "one photo"), (3, "up to three photos"), (None, "every photo")):
        for bar in ("faces", "people", "per-person"):
            key = f"{plan}, bar for {bar}"
            results[key] = enrolment_with_bars(faces, cal, tables, photos=photos, bar=bar)
            print(key, results[key], flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=("projections", "identity-scores", "conditions", "templates"))
    parser.add_argument("--view", default="dlib_sface")
    parser.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args(argv)
    experiments = {
        "projections": projections,
        "identity-scores": identity_scores,
        "conditions": conditions,
        "templates": templates,
    }
    experiments[args.experiment](args.view, args.cache)


if __name__ == "__main__":
    main()
