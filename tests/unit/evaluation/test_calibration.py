"""Calibration: false-alarm thresholds hold on held-out normals, F1-max equals brute force, stored where used."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from kanoclip.evaluation.calibration import f1_max_threshold, false_alarm_threshold


def test_a_one_percent_false_alarm_threshold_gives_one_percent_on_held_out_normals() -> None:
    rng = np.random.default_rng(0)
    for trial in range(5):
        calibration, held_out = rng.normal(size=5000), rng.normal(size=200_000)
        t = false_alarm_threshold(calibration, 0.01)
        assert (calibration >= t.value).sum() == 50  # exactly the allowed share on the calibration set
        # the realised rate on new normals: within sampling error of the 5000-image quantile (sd ~0.0014)
        assert abs((held_out >= t.value).mean() - 0.01) < 0.006, trial
        assert t.warning is None and t.images == 5000


def test_false_alarm_threshold_moves_above_ties_and_warns_when_images_are_too_few() -> None:
    scores = np.array([0.1] * 50 + [0.9] * 3)
    t = false_alarm_threshold(scores, 0.05)  # 2 false alarms allowed, 3 tied at the top: none may be flagged
    assert (scores >= t.value).sum() == 0
    assert "use at least 200 images" in (t.warning or "")


def brute_force_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    best = 0.0
    for threshold in np.unique(scores):
        flagged = scores >= threshold
        tp = (flagged & labels).sum()
        if tp:
            precision, recall = tp / flagged.sum(), tp / labels.sum()
            best = max(best, 2 * precision * recall / (precision + recall))
    return float(best)


def test_f1_max_threshold_equals_a_brute_force_search() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = rng.random(300) < 0.3
        scores = np.round(rng.normal(labels * 1.2, 1.0), 2)  # rounded: ties
        t = f1_max_threshold(labels, scores)
        assert t.f1 == pytest.approx(brute_force_f1(labels, scores), abs=1e-12)
        flagged = scores >= t.value
        assert t.precision == pytest.approx((flagged & labels).sum() / flagged.sum())
        assert t.recall == pytest.approx((flagged & labels).sum() / labels.sum())
        assert t.f1 == pytest.approx(2 * t.precision * t.recall / (t.precision + t.recall))


def test_a_per_pixel_false_alarm_threshold_needs_no_float64_copy_of_the_pixels() -> None:
    """Calibrating maps over many images once sorted a float64 copy of every pixel (4x the float16 maps)."""
    maps = np.random.default_rng(0).random((200, 224, 224), dtype=np.float32).astype(np.float16)
    tracemalloc.start()
    try:
        t = false_alarm_threshold(maps, 0.01, unit="pixels")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 1.5 * maps.nbytes  # one partitioned float16 copy at most
    assert (maps >= t.value).sum() <= 0.01 * maps.size < (maps >= np.nextafter(np.float16(t.value), -1)).sum() + 1
