"""Model card: what a model file contains and exactly how its input is prepared."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from embedding.openset import OpenSetCalibration

FaceTemplateName = Literal["head_92x112", "arcface_112", "dlib_150", "arcface_112x123"]
"""Names of the built-in face templates (`embedding.align.TEMPLATES`)."""


class InputSpec(BaseModel):
    """How a decoded RGB face image (uint8, (H, W, 3)) becomes the model input.

    Steps, implemented once in `embedding.preprocess.to_model_input`:

    1. `resize="center_crop"`: cut the largest centred box with the aspect ratio width/height;
       `resize="stretch"`: keep the whole image (aspect ratio not preserved).
    2. `channels=1`: grey = ITU-R 601 luma, 0.299 R + 0.587 G + 0.114 B (float, not rounded);
       `channels=3`: RGB in that order.
    3. Resize to (height, width) with Pillow's antialiased bilinear filter.
    4. Scale to [0, 1] (divide by 255), then `(x - mean) / std`.

    The result is float32 (N, channels, height, width).

    `face_template` names the aligned crop the model was trained on (`embedding.align.TEMPLATES`):
    the service detects faces, aligns each to that template and then applies the steps above.
    None (cards written before alignment existed) means AT&T-style head crops, i.e. "head_92x112".

    `flip`: each face is embedded together with its mirror image and the embedding is the normalised sum of the
    two (test-time augmentation; twice the network cost). Thresholds are calibrated with the same setting.

    `landmarks`: the five points the model's faces are aligned by, as it was calibrated: "dlib5" (dlib's 5-point
    predictor on the detector's box) or "yunet" (YuNet's own points); None = whatever the service is configured
    with. The service's `FACEDB_DETECTOR_LANDMARKS=auto` follows it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)
    channels: Literal[1, 3]
    mean: float
    std: float = Field(gt=0)
    resize: Literal["stretch", "center_crop"] = "center_crop"
    face_template: FaceTemplateName | None = None
    flip: bool = False
    landmarks: Literal["dlib5", "yunet"] | None = None


class ModelCard(BaseModel):
    """Everything the service needs to know about a model file besides its weights.

    `thresholds` maps a false-accept-rate label such as "1e-3" to the cosine-similarity threshold
    (accept when similarity >= threshold) measured at that FAR; `default_threshold` is one of those
    values and `default_threshold_far` its label: the 1:1 (verify) decision. `open_set` sets 1:N (identify)
    thresholds by gallery size and target FPIR (`embedding.openset`); without it they are derived from
    `thresholds`. `version` is derived from the weights by `embedding.checkpoint.save_checkpoint`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    arch: str
    arch_params: dict[str, Any]
    embedding_dim: int = Field(gt=0)
    input: InputSpec
    training: dict[str, Any]
    metrics: dict[str, Any]
    thresholds: dict[str, float]
    default_threshold: float
    default_threshold_far: float
    open_set: OpenSetCalibration | None = None
    parts: list[int] | None = None
    notes: str = ""

    @model_validator(mode="after")
    def _parts_fill_the_embedding(self) -> ModelCard:
        """`parts`, when given, are at least two positive dims that sum to `embedding_dim`."""
        if self.parts is not None and (
            len(self.parts) < 2 or min(self.parts) < 1 or sum(self.parts) != self.embedding_dim
        ):
            raise ValueError(f"parts {self.parts} must be two or more positive dims summing to {self.embedding_dim}")
        if self.parts is not None and self.input.flip:
            # A mirror image's vector would be added to the fusion's whole vector, unbalancing its parts.
            raise ValueError("a fusion (parts) cannot use mirror-image augmentation (input.flip)")
        return self

    @model_validator(mode="after")
    def _default_threshold_is_listed(self) -> ModelCard:
        """`default_threshold` / `default_threshold_far` must name an entry of `thresholds`."""
        if not self.thresholds:
            return self

        by_far = {float(label): value for label, value in self.thresholds.items()}
        if self.default_threshold_far not in by_far:
            raise ValueError(
                f"default_threshold_far={self.default_threshold_far} is not a key of thresholds "
                f"{sorted(self.thresholds)}"
            )
        if abs(by_far[self.default_threshold_far] - self.default_threshold) > 1e-9:
            raise ValueError(
                f"default_threshold={self.default_threshold} differs from thresholds at FAR "
                f"{self.default_threshold_far} ({by_far[self.default_threshold_far]})"
            )
        return self

    def open_set_calibration(self) -> OpenSetCalibration | None:
        """`open_set`, or one derived from the 1:1 `thresholds` (k = 1); None with fewer than two thresholds."""
        if self.open_set is not None:
            return self.open_set
        if len(self.thresholds) < 2:
            return None
        return OpenSetCalibration.from_thresholds(dict(self.thresholds), source="the card's 1:1 thresholds")
