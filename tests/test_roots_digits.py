"""benchmarks.roots, the digits part: the Keras Siamese article on scikit-learn's 8x8 digits, quick run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import roots


def test_article_pairs_one_same_one_different_per_image() -> None:
    y = np.repeat(np.arange(10), 5)
    first, second, label = roots.article_pairs(y, np.random.default_rng(0))
    assert len(first) == len(second) == len(label) == 2 * len(y)
    assert np.array_equal(first, np.repeat(np.arange(len(y)), 2))
    assert np.array_equal(label, np.tile([0.0, 1.0], len(y)))
    assert np.array_equal(y[first] != y[second], label == 1)


def test_untrained_net_is_at_chance() -> None:
    torch.set_num_threads(1)
    row = roots.digits_experiment(epochs=0, seed=0)
    assert row["acc_p_0.5"] < 0.6


def test_quick_digits_run_beats_chance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "roots.json"
    monkeypatch.setattr(sys, "argv", ["roots", "--only", "digits", "--quick", "--seed", "0", "--out", str(out)])
    roots.main()
    (row,) = json.loads(out.read_text())["rows"]
    assert row["epochs"] == 3
    assert (row["pairs"], row["same_pairs"]) == (720, 360)  # 360 test images, one same and one different pair each
    assert row["acc_p_0.5"] > 0.8  # chance is 0.5; 3 epochs reach ~0.87-0.90 on seeds 0-3
    assert row["auc"] > 0.9
