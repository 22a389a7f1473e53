"""Pictures people read: the evaluation report's plots, per-defect tables and captions, `detect --report`, and the
overlays' colour scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from kanoclip.data.datasets import load_dataset
from kanoclip.data.datasets.base import sample_mask
from kanoclip.data.datasets.synthetic import generate
from kanoclip.evaluation.protocol import evaluate
from kanoclip.inference.overlays import choose_scale, colour_bar, overlay, spread
from tests.conftest import randomize_learnable, tiny_detector


def test_per_defect_metrics_equal_sklearn_on_each_subset(tmp_path: Path) -> None:
    root = tmp_path / "data"
    generate(root, size=64, train=0, good=4, per_defect=3, seed=7)
    detector = tiny_detector()
    randomize_learnable(detector.model)
    index = load_dataset(root)
    results = evaluate(detector, [index], tmp_path / "ev", cases=1)
    checked = 0
    for r in results:
        samples = index.by_class()[r.cls]
        detector.set_class(r.cls)
        predictions = list(detector.run([s.image for s in samples], own_size=False))
        scores = np.array([p.pred_score for p in predictions])
        maps = np.stack([p.anomaly_map for p in predictions]).astype(np.float16).astype(np.float64)
        masks = np.stack([sample_mask(s, detector.image_size) for s in samples])
        defects = np.array([s.defect for s in samples])
        labels = np.array([s.label for s in samples])
        rows = {row["defect"]: row for row in r.defects}
        assert rows["good"]["images"] == int((labels == 0).sum())
        for defect in sorted(set(defects[labels == 1])):
            subset = (labels == 0) | (defects == defect)
            assert rows[defect]["images"] == int((defects == defect).sum())
            assert rows[defect]["image_auroc"] == pytest.approx(roc_auc_score(labels[subset], scores[subset]), abs=1e-9)
            want = roc_auc_score(masks[subset].ravel(), maps[subset].ravel())
            assert rows[defect]["pixel_auroc"] == pytest.approx(want, abs=1e-6)
            checked += 1
    assert checked >= 2


def test_a_narrow_band_of_map_values_spans_the_colour_map_and_a_threshold_sits_at_its_middle() -> None:
    rng = np.random.default_rng(0)
    maps = rng.uniform(0.45, 0.55, size=(4, 64, 64))
    image = np.zeros((64, 64, 3), np.uint8)
    low, high = np.unravel_index(maps[0].argmin(), (64, 64)), np.unravel_index(maps[0].argmax(), (64, 64))

    def painted(scale_mode: str, threshold: float | None = None) -> np.ndarray:
        scale = choose_scale(scale_mode, spread(maps), threshold)
        return overlay(image, maps[0], scale, alpha=1.0).astype(int)

    fixed = painted("fixed")  # 0..1: every pixel green-ish, blue and red channels close
    assert np.abs(fixed[..., 0] - fixed[..., 2]).max() < 120
    run = painted("run")  # the run's spread: the lowest value is jet's dark blue (0, 0, 128), the highest dark red
    assert run[low][2] >= 120 and run[low][0] < 10
    assert run[high][0] >= 120 and run[high][2] < 10
    spans = [np.abs(run[..., c].max() - run[..., c].min()) for c in range(3)]
    assert min(spans) > 200  # every channel swings across the map: visible contrast
    scale = choose_scale("threshold", spread(maps), 0.52)
    assert (scale.vmin + scale.vmax) / 2 == pytest.approx(0.52)
    middle = overlay(image, np.full((8, 8), 0.52), scale, alpha=1.0)[0, 0]
    # jet's middle colour: r = b = 1.5 - |4 * 0.5 - 3| = 0.5, g = 1 (to one level: 0.52 is not exact in float32)
    assert np.abs(middle.astype(int) - (128, 255, 128)).max() <= 1
    bar = colour_bar(400, scale)
    white = np.flatnonzero((bar[0] == 255).all(axis=1))  # the threshold's tick on the bar's first row
    assert white.size and abs(white.mean() - 199.5) <= 2
