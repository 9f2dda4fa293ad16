"""1:N decision thresholds that hold as a gallery grows.

A stranger searched against a gallery of N faces is compared N times, so a threshold set for one comparison at
false-accept rate F lets through about N x F of strangers. The false-positive identification rate (FPIR, the
share of strangers whose best score reaches the threshold) is modelled as

    FPIR(N, t) = 1 - (1 - F(t)) ** (k * N)

with F(t) the 1:1 impostor survival function (the share of different-person pairs scoring >= t) and k the
*effective* comparisons per gallery face (below 1 where impostor scores are correlated: faces that resemble many
people, or several photos of one person in the gallery; it falls as galleries grow). Solving for t gives the
threshold for a target FPIR at the gallery's current size. `OpenSetCalibration` carries F as a table of thresholds
by FAR (measured down to `measured_far`, then extrapolated along the exponential tail fitted below it) and k by
gallery size, measured on galleries of several sizes by `benchmarks/open_set.py` (interpolated in log-log between
them; beyond the largest, k stays at its last value, so the modelled FPIR keeps growing with N).

Grey photos (a black-and-white or near-infrared camera) score higher against strangers than the calibration data's
colour photos. A card may carry one more table of F per `CONDITIONS` entry, measured on the same photos in that
condition; a face in it (`condition_of`) is decided with its table (`OpenSetCalibration.under`), so the FPIR target
holds for it too. (Low resolution was measured too and moves the tail by no more than the noise: no table.)
"""

from __future__ import annotations

import itertools
import math
from typing import Final

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

GREY: Final = "grey"
CONDITIONS: Final[tuple[str, ...]] = (GREY,)
"""The photo conditions a card may carry impostor tables for (colour photos need none: they are the calibration's)."""

GREY_CHROMA: Final = 3.0
"""A face whose mean chroma (`embedding.quality.QualityReport.chroma`, 0-255) is below this is grey: a grey JPEG
decodes with equal channels (0), a black-and-white photo stored in colour keeps a few levels of compression noise;
of LFW's 11,622 photos its 36 black-and-white ones measure below 3, two measure 5-8, and the 1st percentile is 25."""


def condition_of(chroma: float) -> str | None:
    """The `CONDITIONS` label of a face of mean ``chroma`` (None: colour): grey below `GREY_CHROMA`."""
    return GREY if chroma < GREY_CHROMA else None


def _check_table(table: dict[str, float], what: str) -> None:
    points = sorted((float(k), v) for k, v in table.items())
    if len(points) < 2:
        raise ValueError(f"{what} needs at least two points")
    if any(not 0 < far < 1 for far, _ in points):
        raise ValueError(f"{what} keys must be FARs in (0, 1)")
    if any(b[1] >= a[1] for a, b in itertools.pairwise(points)):
        raise ValueError(f"{what}: thresholds must fall as the FAR rises")


class OpenSetCalibration(BaseModel):
    """What a model card carries to set 1:N thresholds (see the module docstring).

    `far_thresholds`: FAR label ("1e-3") -> 1:1 threshold, at least two, FARs strictly decreasing as thresholds
    rise. `comparisons_per_face`: gallery faces ("1000") -> k, at least one. `measured_far`: the smallest FAR
    measured directly (smaller ones are the fitted tail). `source`: the data it was measured on.
    `condition_thresholds`: `CONDITIONS` label -> a table like `far_thresholds` for faces in that condition.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    far_thresholds: dict[str, float]
    comparisons_per_face: dict[str, float] = Field(min_length=1)
    measured_far: float = Field(gt=0, le=1)
    source: str = ""
    condition_thresholds: dict[str, dict[str, float]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _monotone(self) -> OpenSetCalibration:
        _check_table(self.far_thresholds, "far_thresholds")
        if any(int(n) < 1 or k <= 0 for n, k in self.comparisons_per_face.items()):
            raise ValueError("comparisons_per_face maps gallery sizes >= 1 to k > 0")
        for condition, table in self.condition_thresholds.items():
            if condition not in CONDITIONS:
                raise ValueError(f"unknown condition {condition!r}: one of {', '.join(CONDITIONS)}")
            _check_table(table, f"condition_thresholds[{condition!r}]")
        return self

    def under(self, condition: str | None) -> OpenSetCalibration:
        """This calibration for faces in ``condition`` (a `CONDITIONS` label): its table in place of
        `far_thresholds` when the card carries one, else unchanged (None, or a card without that table)."""
        table = self.condition_thresholds.get(condition or "")
        if table is None:
            return self
        return self.model_copy(update={"far_thresholds": table, "condition_thresholds": {}})

    def comparisons(self, gallery_faces: int) -> float:
        """k x N: the effective number of independent impostor comparisons against ``gallery_faces`` faces."""
        points = sorted((math.log(int(n)), math.log(k)) for n, k in self.comparisons_per_face.items())
        n = max(gallery_faces, 1)
        k = math.exp(float(np.interp(math.log(n), [p[0] for p in points], [p[1] for p in points])))
        return k * n

    def threshold_at_far(self, far: float) -> float:
        """The 1:1 threshold at ``far``: log-linear between table points, extended linearly in log10(FAR) beyond."""
        points = sorted((math.log10(float(k)), v) for k, v in self.far_thresholds.items())
        logs = np.array([p[0] for p in points])
        values = np.array([p[1] for p in points])
        x = math.log10(min(max(far, 1e-300), 1.0))
        if x < logs[0]:
            slope = (values[1] - values[0]) / (logs[1] - logs[0])
            return float(values[0] + slope * (x - logs[0]))
        if x > logs[-1]:
            slope = (values[-1] - values[-2]) / (logs[-1] - logs[-2])
            return float(values[-1] + slope * (x - logs[-1]))
        return float(np.interp(x, logs, values))

    def threshold(self, gallery_faces: int, fpir: float) -> float:
        """The 1:N threshold for a target ``fpir`` against ``gallery_faces`` faces (at most 1.0)."""
        if not 0 < fpir < 1:
            raise ValueError(f"fpir must be in (0, 1), got {fpir}")
        far = -math.expm1(math.log1p(-fpir) / self.comparisons(gallery_faces))
        return min(self.threshold_at_far(far), 1.0)

    def fpir(self, gallery_faces: int, threshold: float) -> float:
        """The modelled FPIR of ``threshold`` against ``gallery_faces`` faces (inverse of `threshold`)."""
        lo, hi = -300.0, 0.0
        for _ in range(100):  # bisection on log10(FAR): threshold_at_far falls as FAR rises
            mid = (lo + hi) / 2
            if self.threshold_at_far(10**mid) > threshold:
                lo = mid
            else:
                hi = mid
        far = 10**hi
        return float(-math.expm1(self.comparisons(gallery_faces) * math.log1p(-min(far, 1 - 1e-16))))

    @classmethod
    def from_thresholds(cls, thresholds: dict[str, float], source: str) -> OpenSetCalibration:
        """A calibration from a card's 1:1 thresholds alone (k = 1: impostor comparisons taken as independent)."""
        return cls(
            far_thresholds=thresholds,
            comparisons_per_face={"1": 1.0},
            measured_far=min(map(float, thresholds)),
            source=source,
        )
