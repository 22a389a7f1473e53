"""Every metric against the slow references of reference_metrics.py, on random data and on the real masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from kanoclip.evaluation import metrics
from tests.support import reference_metrics as ref


def quantised(x: np.ndarray, step: float = 0.02) -> np.ndarray:
    """Round scores to a grid: many ties, and few enough distinct values for the slow loops."""
    return np.round(x / step) * step


def maps_for(masks: np.ndarray, seed: int) -> np.ndarray:
    """Plausible anomaly maps: smooth noise plus a blurred copy of the mask, so the metrics are far from 0 and 1."""
    rng = np.random.default_rng(seed)
    noise = np.stack([gaussian_filter(rng.random(m.shape), 3) for m in masks])
    signal = np.stack([gaussian_filter(m.astype(float), 6) for m in masks])
    out = 0.6 * (noise - noise.min()) / (np.ptp(noise) + 1e-12) + 0.8 * signal
    return quantised(out / out.max())


def real_masks(shared_data: Path) -> dict[str, np.ndarray]:
    hazelnut = sorted((shared_data / "MVTec_derived_hazelnut_toy/hazelnut/ground_truth/colour").glob("*.png"))[:6]
    kvasir = sorted((shared_data / "Kvasir-SEG/Kvasir-SEG/masks").glob("*.jpg"))
    ksdd = [shared_data / f"KolektorSDD/kos{n}/Part{k}_label.bmp" for n, k in (("01", 5), ("20", 4), ("13", 0))]

    def stack(paths: list[Path], threshold: int, size: tuple[int, int]) -> np.ndarray:
        return np.stack([np.asarray(Image.open(p).convert("L").resize(size, Image.NEAREST)) > threshold for p in paths])

    return {
        "hazelnut": stack(hazelnut, 0, (256, 256)),
        "kvasir": stack(kvasir, 127, (200, 160)),
        "kolektor": stack(ksdd, 0, (125, 310)),
    }


@pytest.mark.parametrize("seed", range(5))
def test_image_metrics_equal_their_definitions_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60 + 20 * seed
    labels = rng.random(n) < 0.4
    scores = quantised(rng.random(n) + 0.3 * labels, 0.05)  # ties on purpose
    assert metrics.image_auroc(labels, scores) == pytest.approx(ref.auroc_pairwise(labels, scores), abs=1e-6)
    assert metrics.average_precision(labels, scores) == pytest.approx(
        ref.average_precision_loop(labels, scores), abs=1e-6
    )
    assert metrics.f1_max(labels, scores) == pytest.approx(ref.f1_max_loop(labels, scores), abs=1e-6)


def test_image_metrics_on_hand_computed_cases() -> None:
    assert metrics.image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # Ranked: 0.8 (pos), 0.4 (neg), 0.35 (pos): precision 1 at recall 1/2, 2/3 at recall 1.
    assert metrics.average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert metrics.f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)


def test_undefined_metrics_are_nan_not_zero() -> None:
    assert np.isnan(metrics.image_auroc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert np.isnan(metrics.average_precision([0, 0], [0.2, 0.5]))
    assert np.isnan(metrics.aupro(np.zeros((2, 8, 8), bool), np.random.rand(2, 8, 8)))


@pytest.mark.parametrize("seed", range(3))
def test_pixel_metrics_equal_their_definitions_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = np.stack([gaussian_filter(rng.random((40, 48)), 2) > 0.56 for _ in range(4)])
    maps = maps_for(masks, seed)
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(ref.auroc_by_thresholds(masks, maps), abs=1e-6)
    assert metrics.pixel_auroc(masks[:1, :20], maps[:1, :20]) == pytest.approx(
        ref.auroc_pairwise(masks[:1, :20].ravel(), maps[:1, :20].ravel()), abs=1e-6
    )
    assert metrics.pixel_average_precision(masks, maps) == pytest.approx(
        ref.average_precision_loop(masks, maps), abs=1e-6
    )
    assert metrics.pixel_f1_max(masks, maps) == pytest.approx(ref.f1_max_loop(masks, maps), abs=1e-6)
    for limit in (0.3, 0.05, 1.0):
        assert metrics.aupro(masks, maps, fpr_limit=limit) == pytest.approx(
            ref.aupro_exact_loop(masks, maps, limit), abs=1e-6
        )
    assert metrics.aupro(masks, maps, method="anomalyclip") == pytest.approx(ref.aupro_200_loop(masks, maps), abs=1e-6)


def test_pixel_metrics_on_the_real_masks_of_the_shared_data(shared_data: Path) -> None:
    for seed, (name, masks) in enumerate(real_masks(shared_data).items()):
        assert masks.any(), name  # kos13/Part0 is a good part: an empty mask, only normal pixels
        maps = maps_for(masks, seed)
        assert metrics.pixel_auroc(masks, maps) == pytest.approx(ref.auroc_by_thresholds(masks, maps), abs=1e-6)
        assert metrics.pixel_average_precision(masks, maps) == pytest.approx(
            ref.average_precision_loop(masks, maps), abs=1e-6
        )
        assert metrics.aupro(masks, maps) == pytest.approx(ref.aupro_exact_loop(masks, maps), abs=1e-6), name
        assert metrics.aupro(masks, maps, method="anomalyclip") == pytest.approx(
            ref.aupro_200_loop(masks, maps), abs=1e-6
        ), name


def test_exact_aupro_agrees_with_the_200_threshold_variant_within_its_discretisation(shared_data: Path) -> None:
    """Both integrate points of one monotone curve; the stepped one skips points, so the two areas can differ by at
    most the largest PRO jump between its consecutive thresholds (each skipped stretch fits in a box that high)."""
    rng = np.random.default_rng(7)
    masks = real_masks(shared_data)["hazelnut"]
    maps = np.stack([gaussian_filter(rng.random(m.shape), 2) + 0.5 * gaussian_filter(m * 1.0, 4) for m in masks])
    exact = metrics.aupro(masks, maps)
    stepped = metrics.aupro_stepped(masks, maps, rescale=False)
    lo, hi = maps.min(), maps.max()
    points = ref.pro_curve(masks, maps, list(np.arange(lo, hi, (hi - lo) / 200)), strict=True)[::-1]
    inside = [p for f, p in points if f <= 0.3]
    first_past = next(p for f, p in points if f > 0.3)
    bound = max(np.diff([0.0, *inside, first_past]))
    assert 0 < bound < 0.2 and abs(exact - stepped) <= bound
    assert abs(exact - stepped) > 0  # the variants really differ: the bound is what makes them agree


def test_mismatched_shapes_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="one shape"):
        metrics.aupro(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="differ in size"):
        metrics.image_auroc([0, 1], [0.5])
