"""1:N thresholds by gallery size (`embedding.openset`): the model, and a simulation where its assumptions hold."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from embedding.openset import OpenSetCalibration, condition_of


def _unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def _table(impostors: np.ndarray) -> dict[str, float]:
    s = np.sort(impostors)[::-1]
    return {f"{far:.0e}": float(s[int(far * len(s)) - 1]) for far in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)}


def test_threshold_rises_with_the_gallery_and_inverts() -> None:
    cal = OpenSetCalibration(
        far_thresholds={"1e-1": 0.3, "1e-2": 0.4, "1e-3": 0.48, "1e-4": 0.55},
        comparisons_per_face={"10": 1.0, "1000": 0.5},
        measured_far=1e-4,
    )
    sizes = [1, 10, 100, 1000, 10_000, 1_000_000]
    thresholds = [cal.threshold(n, 1e-2) for n in sizes]
    assert thresholds == sorted(thresholds) and thresholds[0] < thresholds[-1]
    for n in sizes:
        assert cal.fpir(n, cal.threshold(n, 1e-2)) == pytest.approx(1e-2, rel=1e-3)
    assert cal.threshold(1, 1e-2) == pytest.approx(0.4, abs=1e-3)  # one face, k = 1: the 1:1 threshold
    # beyond the table the tail continues along its last slope (0.07 per decade)
    assert cal.threshold_at_far(1e-6) == pytest.approx(0.69)
    assert cal.threshold(10**12, 1e-2) == 1.0  # never above the largest possible score


def test_a_card_without_1n_calibration_derives_one_from_its_1to1_thresholds() -> None:
    cal = OpenSetCalibration.from_thresholds({"1e-2": 0.4, "1e-3": 0.5}, source="test")
    assert cal.threshold(1, 1e-3) == pytest.approx(0.5, abs=1e-3)
    assert cal.threshold(10, 1e-2) == pytest.approx(0.5, abs=1e-2)  # 10 comparisons at 1e-2 ~ 1e-3 each


@pytest.mark.parametrize(
    "table",
    [{"1e-2": 0.4}, {"1e-2": 0.4, "1e-3": 0.3}, {"1e-2": 0.4, "2": 0.5}],
)
def test_bad_tables_are_refused(table: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        OpenSetCalibration(far_thresholds=table, comparisons_per_face={"1": 1.0}, measured_far=1e-3)


def test_measured_fpir_follows_the_target_at_every_gallery_size() -> None:
    """Independent random faces (k = 1 holds): calibrated on one population, measured on another, FPIR stays
    within a factor of two of its target from 10 to 3,000 faces."""
    rng = np.random.default_rng(0)
    dim = 48
    cal_faces = _unit(rng.standard_normal((3000, dim)))
    scores = cal_faces @ cal_faces.T
    impostors = scores[np.triu_indices(len(cal_faces), 1)]
    cal = OpenSetCalibration(far_thresholds=_table(impostors), comparisons_per_face={"1": 1.0}, measured_far=1e-5)
    strangers = _unit(rng.standard_normal((4000, dim)))
    for n in (10, 100, 1000, 3000):
        gallery = _unit(rng.standard_normal((n, dim)))
        best = (strangers @ gallery.T).max(axis=1)
        t = cal.threshold(n, 1e-2)
        measured = float((best >= t).mean())
        assert 0.5e-2 <= measured <= 2e-2, (n, t, measured)
        naive = float((best >= cal.threshold_at_far(1e-2)).mean())  # one 1:1 threshold for every size
        if n >= 100:
            assert naive > 10 * measured


def _with_conditions(**extra: object) -> OpenSetCalibration:
    return OpenSetCalibration.model_validate(
        {
            "far_thresholds": {"1e-2": 0.4, "1e-3": 0.5, "1e-4": 0.6},
            "comparisons_per_face": {"1": 1.0},
            "measured_far": 1e-4,
            **extra,
        }
    )


def test_a_photo_condition_with_its_own_table_is_decided_by_it() -> None:
    cal = _with_conditions(condition_thresholds={"grey": {"1e-2": 0.42, "1e-3": 0.53, "1e-4": 0.64}})
    grey = cal.under("grey")
    assert grey.threshold_at_far(1e-3) == pytest.approx(0.53)
    assert grey.threshold(100, 1e-2) > cal.threshold(100, 1e-2)
    assert grey.comparisons(100) == cal.comparisons(100)  # k is the gallery's, whatever the probe's condition
    assert cal.under(None) is cal  # colour: the card's own table
    assert _with_conditions().under("grey").threshold(100, 1e-2) == cal.threshold(100, 1e-2)  # no grey table


@pytest.mark.parametrize(
    "tables",
    [
        {"sepia": {"1e-2": 0.4, "1e-3": 0.5}},
        {"grey": {"1e-2": 0.5, "1e-3": 0.4}},
        {"grey": {"1e-2": 0.5}},
    ],
)
def test_bad_condition_tables_are_refused(tables: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _with_conditions(condition_thresholds=tables)


@pytest.mark.parametrize(("chroma", "label"), [(25.0, None), (3.0, None), (2.9, "grey"), (0.0, "grey")])
def test_condition_of_a_face(chroma: float, label: str | None) -> None:
    assert condition_of(chroma) == label
