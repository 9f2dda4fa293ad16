"""benchmarks.open_set's enrolment model (the conflict check scores other people as the service does: the normalised
mean of their accepted faces, or their best face, never the person being enrolled) and its reading of what
`facedb enroll` prints (`folders`) and what a model card records of it; the score changes of `open_set_ablations`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.open_set import (
    FOLDERS_FIGURES,
    CliNote,
    Faces,
    FolderTrees,
    PersonMeans,
    PhotoConditions,
    _best_other,
    _folders_figures,
    _warned,
    bars,
    in_condition,
    parse_enrol_output,
    score_folders,
)
from benchmarks.open_set_ablations import Scatter, mean_templates, per_person_bars, person_scores, projection
from embedding.openset import OpenSetCalibration
from index.gallery import Hit
from scripts.build_sface import _enrolment_lines
from service.core import Lookalike, _conflict, _mismatch, _possible_duplicate
from service.db.models import Identity


def _unit(*rows: list[float]) -> np.ndarray:
    x = np.array(rows, dtype=np.float64)
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def test_best_other_scores_by_mean_or_best_face() -> None:
    # earlier photos: person 0 has two different faces, person 1 one face; the photo being checked is person 2's
    earlier = _unit([1, 0, 0], [0, 1, 0], [1, 1, 0.6])
    labels = np.array([0, 0, 1])
    face = _unit([1, 1, 0])[0]
    sums = np.zeros((3, 3))
    np.add.at(sums, labels, earlier)
    scores = earlier @ face
    accepted = np.ones(3, dtype=bool)

    people = PersonMeans.from_sums(sums)
    best_person, best_score = _best_other(scores, accepted, labels, 2, people, face, "best")
    mean_person, mean_score = _best_other(scores, accepted, labels, 2, people, face, "mean")

    # by the best face, person 1's single face wins; by the mean, person 0's two faces do
    assert (best_person, best_score) == (1, float(scores[2]))
    assert scores[2] > scores[:2].max()
    assert mean_person == 0
    assert mean_score == pytest.approx(float(face @ sums[0] / np.linalg.norm(sums[0])), abs=1e-12)
    assert mean_score > float(scores[2])


def test_best_other_ignores_the_person_enrolled_and_refused_photos() -> None:
    earlier = _unit([1, 0, 0], [0, 1, 0])
    labels = np.array([0, 1])
    face = _unit([1, 0.1, 0])[0]
    sums = np.zeros((2, 3))
    sums[0] = earlier[0]  # person 1's photo was refused: not accepted, not summed
    accepted = np.array([True, False])
    people = PersonMeans.from_sums(sums)
    assert _best_other(earlier @ face, accepted, labels, 0, people, face, "mean") == (-1, -2.0)
    assert _best_other(earlier @ face, accepted, labels, 0, people, face, "best") == (-1, -2.0)
    person, _ = _best_other(earlier @ face, accepted, labels, 1, people, face, "mean")
    assert person == 0


def test_best_other_takes_a_fusions_means_part_by_part() -> None:
    # two-part fusion vectors: person 0's faces agree in the first part and differ in the second
    a = _unit([1, 0], [1, 0.05])
    b = _unit([1, 0], [-0.6, 1])
    earlier = np.concatenate([a, b], axis=1) / np.sqrt(2)
    labels = np.array([0, 0])
    sums = np.zeros((2, 4))
    np.add.at(sums, labels, earlier)
    face = (np.concatenate([_unit([1, 0])[0], _unit([0, 1])[0]]) / np.sqrt(2)).astype(np.float64)
    accepted = np.ones(2, dtype=bool)
    _, whole = _best_other(earlier @ face, accepted, labels, 1, PersonMeans.from_sums(sums), face, "mean")
    _, by_part = _best_other(earlier @ face, accepted, labels, 1, PersonMeans.from_sums(sums, (2, 2)), face, "mean")
    halves = [sums[0, :2] / np.linalg.norm(sums[0, :2]), sums[0, 2:] / np.linalg.norm(sums[0, 2:])]
    assert by_part == pytest.approx(float(face @ (np.concatenate(halves) / np.sqrt(2))), abs=1e-12)
    assert whole == pytest.approx(float(face @ sums[0] / np.linalg.norm(sums[0])), abs=1e-12)
    assert abs(by_part - whole) > 0.01


def test_person_means_kept_one_face_at_a_time_equal_means_of_the_sums() -> None:
    rng = np.random.default_rng(0)
    faces = rng.standard_normal((12, 4))
    labels = rng.integers(0, 5, 12)
    for parts in (None, (2, 2)):
        kept = PersonMeans.from_sums(np.zeros((5, 4)), parts)
        for label, face in zip(labels, faces, strict=True):
            kept.add(int(label), face)
        sums = np.zeros((5, 4))
        np.add.at(sums, labels, faces)
        direct = PersonMeans.from_sums(sums, parts)
        np.testing.assert_allclose(kept.means, direct.means, atol=1e-12)
        np.testing.assert_array_equal(kept.enrolled, np.isin(np.arange(5), labels))


def test_warned_photos_look_more_like_someone_else_than_like_their_own() -> None:
    """`_warned` mirrors the service's possible_duplicate: the best other person reaches identify's bar and beats
    every other accepted photo of the photo's own person; refused photos and lone photos follow the same rule."""
    x = _unit([1, 0, 0], [1, 0.1, 0], [0, 1, 0], [0.8, 0.6, 0], [0, 0, 1])
    labels = np.array([0, 1, 1, 2, 3])
    accepted = np.array([True, True, True, True, False])
    rival = np.array([-2.0, 0.99, 0.5, 0.8, 0.9])  # photo 1 is almost person 0's photo; 2's rival is below the bar
    bar = np.full(5, 0.7)
    warned = _warned(x, labels, accepted, rival, bar)
    assert float(x[1] @ x[2]) < 0.99  # photo 1 looks more like person 0 than like person 1's other photo
    assert warned.tolist() == [False, True, False, True, False]
    # the same photo with a closer photo of its own person is not warned about
    x2 = x.copy()
    x2[2] = x[1]
    assert not _warned(x2, labels, accepted, np.where(np.arange(5) == 1, 0.9, rival), bar)[1]


def test_the_folders_run_reads_what_facedb_enroll_prints() -> None:
    """`parse_enrol_output` reads the lines `facedb enroll` prints, built here from the service's own messages, and
    takes the other identity's external id (the folder it came from) from a conflict or a warning."""
    other = Identity(id=12, external_id="lfw.Jane_Doe")
    own = Identity(id=40, external_id="lfw.John_Roe.again")
    conflict = _conflict("John_Roe_0003.jpg", Hit(12, 120, 0.91), other, 0.8)
    warning = _possible_duplicate("b.jpg", 77, Lookalike(0, Hit(12, 121, 0.74), other, 0.7))
    mismatch = _mismatch("c.jpg", own, 0.2, 0.5)
    lines = [
        "enrolling into default:  50%|#####     | 1/2",
        f"rejected lfw.John_Roe.again/{conflict.filename}: {conflict.code}: {conflict.message}",
        f"warning celeba.7201/{warning.filename}: {warning.code}: {warning.message}",
        f"rejected att.s1/{mismatch.filename}: {mismatch.code}: {mismatch.message}",
        "rejected att.s2/9.pgm: extreme_pose: the face is turned too far from the camera (yaw 61 degrees)",
    ]
    assert parse_enrol_output("\n".join(lines)) == [
        CliNote("lfw.John_Roe.again", "identity_conflict", "lfw.Jane_Doe"),
        CliNote("celeba.7201", "possible_duplicate", "lfw.Jane_Doe"),
        CliNote("att.s1", "face_mismatch", "lfw.John_Roe.again"),
        CliNote("att.s2", "extreme_pose", None),
    ]


def test_the_folders_run_counts_mistaken_conflicts_and_re_enrolments_caught() -> None:
    """`score_folders`: a conflict with the same person filed under another name is no mistake; a re-enrolment
    whose photo failed the quality gates is not counted; caught needs a refusal naming the person, named a refusal
    or a warning."""
    person = {
        "lfw.A": "lfw/A",
        "lfw.A2": "lfw/A",
        "lfw.B": "lfw/B",
        "lfw.C": "lfw/C",
        "att.s1": "att/s1",
        "lfw.D": "lfw/D",
    }
    photos = {"lfw.A": 1, "lfw.A2": 1, "lfw.B": 2, "lfw.C": 3, "att.s1": 9, "lfw.D": 1}
    trees = FolderTrees(Path("first"), Path("again"), person, photos, {"lfw.A", "lfw.B", "lfw.C", "att.s1", "lfw.D"})
    first = [
        CliNote("lfw.A2", "identity_conflict", "lfw.A"),  # one person under two names: right to refuse
        CliNote("lfw.C", "identity_conflict", "lfw.B"),  # a mistake
        CliNote("lfw.C", "identity_conflict", "lfw.B"),
        CliNote("att.s1", "possible_duplicate", "lfw.B"),
        CliNote("att.s1", "too_dark", None),
        CliNote("lfw.D", "no_face", None),  # D's only photo enrolled failed: D cannot be caught again
    ]
    again = [
        CliNote("lfw.A.again", "identity_conflict", "lfw.A2"),  # caught: A2 is A
        CliNote("lfw.B.again", "possible_duplicate", "lfw.B"),  # named only
        CliNote("lfw.C.again", "identity_conflict", "lfw.B"),  # names someone else
        CliNote("att.s1.again", "multiple_faces", None),  # gated: not tried
    ]
    out = score_folders(first, again, trees)
    assert out["identities"] == 6 and out["people"] == 5
    assert out["identities_enrolled"] == 4  # A2's one photo was refused, and D's
    assert out["rejected"] == {"identity_conflict": 3, "too_dark": 1, "no_face": 1}
    assert out["wrong_conflicts"] == [("lfw.C", "lfw.B")]
    assert out["identities_with_a_conflict_naming_someone_else"] == 1
    assert out["identities_with_a_conflict_naming_themselves"] == ["lfw.A2"]
    assert out["identities_warned"] == 1
    assert out["reenrolled"] == 3
    assert out["reenrol_caught"] == round(1 / 3, 4)
    assert out["reenrol_named"] == round(2 / 3, 4)


def test_wccn_whitens_the_training_within_class_covariance_and_lda_keeps_the_separating_direction() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 4)) * np.array([3.0, 0.1, 0.1, 0.1])  # people differ along the first axis only
    labels = np.repeat(np.arange(40), 5)
    x = centres[labels] + rng.normal(size=(200, 4)) * np.array([0.1, 1.0, 2.0, 0.5])
    scatter = Scatter.of(x, labels)
    w = projection(scatter, "wccn", shrink=0.0)
    assert np.allclose(w.T @ scatter.within @ w, np.eye(4), atol=1e-6)
    lda = projection(scatter, "lda", shrink=0.0, dims=1)
    assert lda.shape == (4, 1) and abs(lda[0, 0]) / np.linalg.norm(lda) > 0.99


def test_person_scores_rules_agree_with_their_definitions() -> None:
    x = _unit([1, 0, 0], [0.6, 0.8, 0], [0, 0, 1], [0, 1, 1]).astype(np.float32)
    bounds = np.array([0, 2, 4])  # person 0: rows 0-1, person 1: rows 2-3
    q = _unit([1, 1, 0], [0, 0, 1]).astype(np.float32)
    cos = q @ x.T
    assert np.allclose(person_scores(q, x, bounds, "best"), np.stack([cos[:, :2].max(1), cos[:, 2:].max(1)], 1))
    assert np.allclose(person_scores(q, x, bounds, "avgcos"), np.stack([cos[:, :2].mean(1), cos[:, 2:].mean(1)], 1))
    assert np.allclose(person_scores(q, x, bounds, "top1"), person_scores(q, x, bounds, "best"))
    assert np.allclose(person_scores(q, x, bounds, "top9"), person_scores(q, x, bounds, "avgcos"))
    mean = person_scores(q, x, bounds, "mean")
    expected = (x[0] + x[1]) / np.linalg.norm(x[0] + x[1])
    assert np.allclose(mean[:, 0], q @ expected, atol=1e-6)
    heavy = person_scores(q, x, bounds, "mean", weights=np.array([1.0, 0.0, 1.0, 1.0]))
    assert np.allclose(heavy[:, 0], q @ x[0], atol=1e-6)  # a zero weight drops a face from its person's mean


def test_mean_templates_are_disjoint_runs_of_k_found_photos_averaged_part_by_part() -> None:
    x = np.vstack([_unit([1, 0, 3, 4]), _unit([0, 1, 4, 3]), _unit([1, 1, 0, 1]), _unit([1, 0, 0, 1])])
    x = np.vstack([x, _unit([0, 1, 1, 0])]).astype(np.float32)
    x[:, :2] /= np.linalg.norm(x[:, :2], axis=1, keepdims=True) * np.sqrt(2)  # each part of norm 1/sqrt(2)
    x[:, 2:] /= np.linalg.norm(x[:, 2:], axis=1, keepdims=True) * np.sqrt(2)
    found = np.array([True, True, False, True, True])
    faces = Faces(np.array(["a"] * 4 + ["b"]), np.full(5, "calibration"), found, x, parts=(2, 2))
    rows = {"a": [0, 1, 2, 3], "b": [4]}
    t, who = mean_templates(faces, ["a", "b"], rows, 2)
    assert who.tolist() == ["a"]  # a's found photos 0, 1, 3: one run of two; b has too few
    for part in (slice(0, 2), slice(2, 4)):
        s = x[0, part] + x[1, part]
        assert np.allclose(t[0, part], s / np.linalg.norm(s) / np.sqrt(2), atol=1e-6)
    t1, who1 = mean_templates(faces, ["a", "b"], rows, 1)
    assert who1.tolist() == ["a", "a", "a", "b"] and np.allclose(t1, x[[0, 1, 3, 4]], atol=1e-6)
    assert len(mean_templates(faces, ["b"], rows, 3)[0]) == 0


def test_per_person_bars_read_each_persons_template_tail_at_one_far() -> None:
    def table(shift: float) -> OpenSetCalibration:
        far = {"1e-2": 0.4 + shift, "1e-3": 0.5 + shift, "1e-4": 0.6 + shift}
        return OpenSetCalibration(far_thresholds=far, comparisons_per_face={"1": 1.0}, measured_far=1e-4)

    tables = {1: table(0.0), 2: table(0.02), 3: table(0.03), 5: table(0.05), 8: table(0.06)}
    cal = table(0.0)
    bars_ = per_person_bars(cal, tables, 10, np.array([1, 2, 4, 7, 30]), 1e-2)
    single = cal.threshold(10, 1e-2)  # ten people, one comparison each
    assert bars_ == pytest.approx(single + np.array([0.0, 0.02, 0.03, 0.05, 0.06]))
    grey = table(0.01)  # a condition's table moves every person's bar by its own shift
    assert per_person_bars(grey, tables, 10, np.array([1, 7]), 1e-2) == pytest.approx(single + np.array([0.01, 0.06]))


def test_a_photo_in_a_condition_is_grey_and_shrunk_with_its_landmarks() -> None:
    checker = np.indices((80, 80)).sum(0) % 2 * 255  # 1 px squares
    photo = np.stack([checker, np.zeros_like(checker), 255 - checker], axis=2).astype(np.uint8)
    landmarks = np.array([[20, 30], [60, 30], [40, 45], [25, 60], [55, 60]], dtype=np.float32)  # eyes 40 px apart
    g, same = in_condition(photo, landmarks, grey=True, inter_eye_px=None)
    assert g.shape == photo.shape and (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    assert abs(int(np.ptp(g[..., 0])) - round((0.299 - 0.114) * 255)) <= 1  # red against blue squares, in luma
    assert np.array_equal(same, landmarks)
    small, moved = in_condition(photo, landmarks, grey=False, inter_eye_px=20.0)
    assert small.shape == (40, 40, 3) and np.ptp(small[..., 0]) <= 2  # 2x2 boxes average the squares away
    assert np.allclose(moved, landmarks / 2) and np.linalg.norm(moved[1] - moved[0]) == pytest.approx(20.0)
    kept, _ = in_condition(photo, landmarks, grey=False, inter_eye_px=60.0)  # never enlarged
    assert kept.shape == photo.shape


def test_each_photo_gets_its_conditions_bar() -> None:
    cal = OpenSetCalibration(
        far_thresholds={"1e-2": 0.4, "1e-3": 0.5, "1e-4": 0.6},
        comparisons_per_face={"1": 1.0},
        measured_far=1e-4,
        condition_thresholds={"grey": {"1e-2": 0.45, "1e-3": 0.55, "1e-4": 0.65}},
    )
    photos = PhotoConditions(chroma=np.array([20.0, 0.0, 2.0, 40.0]), inter_eye_px=np.array([40.0, 40.0, 20.0, 20.0]))
    labels = photos.labels()
    assert labels.tolist() == ["", "grey", "grey", ""]
    b = bars(cal, labels, 100, 1e-2)
    assert b[0] == b[3] == pytest.approx(cal.threshold(100, 1e-2))
    assert b[1] == b[2] == pytest.approx(cal.under("grey").threshold(100, 1e-2)) and b[1] > b[0]


def test_a_card_records_a_folders_run_only_of_its_own_model_and_bar(tmp_path: Path) -> None:
    run = {k: 1 for k in FOLDERS_FIGURES} | {"model": "m.onnx", "conflict_fpir": 0.001, "first_notes": [["a", "b"]]}
    path = tmp_path / "folders.json"
    path.write_text(json.dumps(run))
    figures = _folders_figures(path, Path("models/m.onnx"), 0.001)
    assert set(figures) == set(FOLDERS_FIGURES)  # the notes stay in the run's JSON
    for model, bar in (("other.onnx", 0.001), ("m.onnx", 0.0015)):
        with pytest.raises(ValueError, match="not of"):
            _folders_figures(path, Path(model), bar)
    path.write_text(json.dumps({k: v for k, v in run.items() if k != "model"}))  # a run from before runs said
    with pytest.raises(ValueError, match="not of"):
        _folders_figures(path, Path("m.onnx"), 0.001)


def test_the_card_shows_every_photo_warnings_and_the_facedb_enroll_run() -> None:
    base = {"people": 10, "people_refused_as_conflicts": 1, "refusal_rate": 0.1, "reenrol_caught": 0.5}
    enrolment = {
        "1_photos": base | {"photos_per_person": 1, "reenrolled": 4, "conflict_fpir": 0.001},  # before warnings
        "every_photos": base
        | {"photos_per_person": None, "reenrolled": 4, "conflict_fpir": 0.001, "warning_rate": 0.2}
        | {"reenrol_named": 0.75},
    }
    cli = {k: 0 for k in FOLDERS_FIGURES} | {"model": "m.onnx", "conflict_fpir": 0.001, "reenrol_caught": 0.9}
    text = "\n".join(_enrolment_lines({"enrolment": enrolment, "enrolment_facedb_enroll": cli}))
    assert "| 1 | 10 | 1 (10.00%) | 50.0% of 4 | - | - | 0.001 |" in text
    assert "| every photo, one at a time | 10 | 1 (10.00%) | 50.0% of 4 | 20.00% | 75.0% | 0.001 |" in text
    assert "Through `facedb enroll`" in text and "m.onnx at conflict FPIR 0.001" in text and "90.0% of 0" in text
    assert _enrolment_lines({}) == []
