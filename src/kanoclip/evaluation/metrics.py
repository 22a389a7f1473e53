"""Image and pixel metrics of the field (SPEC §6): AUROC, AP, F1-max and AUPRO, as plain functions of arrays.

Every metric is exact over all thresholds (ties switch together) and returns NaN where it is undefined (one label
only, no masks): a table shows that as "—", never as 0. Pixel metrics take all pixels of a class, flattened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class Curve:
    """Cumulative true and false positives at every distinct score, from the highest threshold down."""

    thresholds: NDArray[np.float64]
    tp: NDArray[np.int64]
    fp: NDArray[np.int64]
    positives: int
    negatives: int


def _curve(labels: ArrayLike, scores: ArrayLike) -> Curve | None:
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in size: {y.shape} vs {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    if len(pos) == 0 or len(neg) == 0:
        return None
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    tp = len(pos) - np.searchsorted(pos, thresholds, side="left")
    fp = len(neg) - np.searchsorted(neg, thresholds, side="left")
    return Curve(thresholds, tp, fp, len(pos), len(neg))


def _auroc(curve: Curve | None) -> float:
    if curve is None:
        return float("nan")
    tpr = np.concatenate([[0.0], curve.tp / curve.positives])
    fpr = np.concatenate([[0.0], curve.fp / curve.negatives])
    return float(np.trapezoid(tpr, fpr))


def _average_precision(curve: Curve | None) -> float:
    """Σ (R_k − R_{k−1}) · P_k over the distinct thresholds (sklearn's definition, no interpolation)."""
    if curve is None:
        return float("nan")
    precision = curve.tp / (curve.tp + curve.fp)
    recall = curve.tp / curve.positives
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def _f1_max(curve: Curve | None) -> tuple[float, float]:
    if curve is None:
        return float("nan"), float("nan")
    precision = curve.tp / (curve.tp + curve.fp)
    recall = curve.tp / curve.positives
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(curve.thresholds[best])


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve of image scores; labels 1 = anomalous."""
    return _auroc(_curve(labels, scores))


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    return _average_precision(_curve(labels, scores))


def f1_max(labels: ArrayLike, scores: ArrayLike) -> float:
    """The best F1 over all thresholds (score >= threshold means anomalous)."""
    return _f1_max(_curve(labels, scores))[0]


def f1_max_threshold(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """(best F1, the threshold that reaches it)."""
    return _f1_max(_curve(labels, scores))


def curve_metrics(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float, float]:
    """(AUROC, AP, F1-max) from one sort: for pixels, three separate calls would sort every pixel three times."""
    return summarize(labels, scores)[0]


@dataclass
class CurvePoints:
    """ROC and precision-recall curves thinned for a plot, with the areas computed on the full curves."""

    fpr: NDArray[np.float64]
    tpr: NDArray[np.float64]
    recall: NDArray[np.float64]
    precision: NDArray[np.float64]
    auroc: float
    ap: float
    f1_max_threshold: float


def summarize(
    labels: ArrayLike, scores: ArrayLike, points: int = 0
) -> tuple[tuple[float, float, float], CurvePoints | None]:
    """(AUROC, AP, F1-max) and, with `points` > 0, the curves thinned to about that many points, from one sort
    (None where the curves are undefined: one label only)."""
    curve = _curve(labels, scores)
    f1, at = _f1_max(curve)
    values = (_auroc(curve), _average_precision(curve), f1)
    if curve is None or points <= 0:
        return values, None
    keep = np.unique(np.linspace(0, len(curve.thresholds) - 1, points).round().astype(np.int64))
    tp, fp = curve.tp[keep], curve.fp[keep]
    drawn = CurvePoints(
        fpr=np.concatenate([[0.0], fp / curve.negatives]),
        tpr=np.concatenate([[0.0], tp / curve.positives]),
        recall=tp / curve.positives,
        precision=tp / (tp + fp),
        auroc=values[0],
        ap=values[1],
        f1_max_threshold=at,
    )
    return values, drawn


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """AUROC over every pixel of every image; masks (N, H, W) bool, maps (N, H, W) float."""
    return image_auroc(masks, maps)


def pixel_average_precision(masks: ArrayLike, maps: ArrayLike) -> float:
    return average_precision(masks, maps)


def pixel_f1_max(masks: ArrayLike, maps: ArrayLike) -> float:
    return f1_max(masks, maps)


def _regions(masks: NDArray[np.bool_]) -> tuple[NDArray[np.int64], NDArray[np.int64], int]:
    """Connected ground-truth regions (8-connectivity), numbered 1.. across all images.

    Returns the region id of every mask pixel (in `masks[mask]` order), the area of each region (index 0 unused) and
    the number of regions. Only mask pixels are stored, never a full id image per map.
    """
    ids: list[NDArray[np.int64]] = []
    count = 0
    for mask in masks:
        if mask.any():
            labelled, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
            ids.append(labelled[mask].astype(np.int64) + count)
            count += n
    region_of = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    return region_of, np.bincount(region_of, minlength=count + 1), count


def _check_pixels(masks: ArrayLike, maps: ArrayLike) -> tuple[NDArray[np.bool_], NDArray[np.floating]]:
    m = np.asarray(masks).astype(bool, copy=False)
    a = np.asarray(maps)
    if a.dtype not in (np.float32, np.float64):  # float16 maps and integer maps compare exactly in float32
        a = a.astype(np.float32)
    if m.shape != a.shape or m.ndim != 3:
        raise ValueError(f"masks and maps must both be (N, H, W) arrays of one shape, got {m.shape} and {a.shape}")
    return m, a


def aupro(masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3, method: str = "exact") -> float:
    """Area under the per-region-overlap curve up to `fpr_limit`, divided by the limit; in [0, 1].

    `exact`: every distinct score is a threshold (score >= t is anomalous), PRO is the mean over all connected
    ground-truth regions of all images of the detected fraction, the curve starts at (0, 0) and is closed at exactly
    the limit by linear interpolation (MVTec AD's evaluation). `anomalyclip`: the 200-threshold variant of the
    AnomalyCLIP/APRIL-GAN code, for comparison with published tables (§6).
    """
    m, a = _check_pixels(masks, maps)
    if method == "anomalyclip":
        return _aupro_stepped(m, a, fpr_limit, steps=200, rescale=True)
    if method != "exact":
        raise ValueError(f"method must be 'exact' or 'anomalyclip', got {method!r}")
    region_of, area, n_regions = _regions(m)
    normal = a[~m]
    if n_regions == 0 or normal.size == 0:
        return float("nan")
    n_normal = normal.size
    # Only thresholds whose FPR can stay under the limit matter: at most floor(limit·N) normal pixels above them.
    # The (allowed+1)-th largest normal score is the first threshold past the limit (a partition finds it in linear
    # time); every normal score tied with it must stay, or the FPR of that last point would be too low.
    allowed = int(np.floor(fpr_limit * n_normal))
    cutoff = -np.inf
    if allowed < n_normal:
        k = n_normal - allowed - 1
        cutoff = np.partition(normal, k)[k]
        normal = normal[normal >= cutoff]
    normal = np.sort(normal)
    anomalous = a[m]
    weights = 1.0 / (area[region_of] * n_regions)  # each region counts once, whatever its size
    order = np.argsort(anomalous, kind="stable")
    anomalous, weights = anomalous[order], weights[order]
    cum_weights = np.concatenate([[0.0], np.cumsum(weights)])
    thresholds = np.sort(np.concatenate([normal, anomalous[anomalous >= cutoff]]))
    thresholds = thresholds[np.concatenate([thresholds[1:] != thresholds[:-1], [True]])][::-1]  # distinct, descending
    fpr = (normal.size - np.searchsorted(normal, thresholds, side="left")) / n_normal
    pro = cum_weights[-1] - cum_weights[np.searchsorted(anomalous, thresholds, side="left")]
    return _integrate(np.concatenate([[0.0], fpr]), np.concatenate([[0.0], pro]), fpr_limit)


def _integrate(fpr: NDArray[np.float64], pro: NDArray[np.float64], limit: float) -> float:
    """Trapezoid area under pro(fpr) from 0 to `limit`, closing at the limit by interpolation, over the limit."""
    inside = fpr <= limit
    x, y = fpr[inside], pro[inside]
    if not inside.all():
        k = int(np.argmax(~inside))  # first point past the limit; fpr is non-decreasing
        x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0) if x1 > x0 else y1
        x, y = np.append(x, limit), np.append(y, y_limit)
    return float(np.trapezoid(y, x) / limit)


def aupro_stepped(
    masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3, steps: int = 200, rescale: bool = True
) -> float:
    """AUPRO on `steps` linearly spaced thresholds (map > t). With `rescale` (AnomalyCLIP): keep FPR < limit, rescale
    those FPRs by min-max and take the trapezoid area; without: integrate like `aupro` (for comparisons)."""
    m, a = _check_pixels(masks, maps)
    return _aupro_stepped(m, a, fpr_limit, steps, rescale)


def _aupro_stepped(m: NDArray[np.bool_], a: NDArray[np.floating], fpr_limit: float, steps: int, rescale: bool) -> float:
    region_of, area, n_regions = _regions(m)
    if n_regions == 0 or (~m).sum() == 0:
        return float("nan")
    lo, hi = float(a.min()), float(a.max())
    thresholds = np.arange(lo, hi, (hi - lo) / steps) if hi > lo else np.array([lo])
    normal = np.sort(a[~m])
    anomalous = a[m]
    area = area[1:]
    fpr = (normal.size - np.searchsorted(normal, thresholds, side="right")) / normal.size
    # Pixel counted at threshold k iff score > t_k, i.e. k < (number of thresholds below the score): histogram each
    # region's pixels by that number once, then a reversed cumulative sum gives every threshold's hits at once.
    n_t = len(thresholds)
    below = np.searchsorted(thresholds, anomalous, side="left")  # thresholds strictly below each score
    counts = np.bincount(region_of * (n_t + 1) + below, minlength=(n_regions + 1) * (n_t + 1))
    counts = counts.reshape(n_regions + 1, n_t + 1)[1:]
    hits = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (regions, thresholds): pixels with below > k
    pro = (hits / area[:, None]).mean(axis=0)
    if rescale:
        keep = fpr < fpr_limit
        if keep.sum() < 2:
            return float("nan")
        x, y = fpr[keep], pro[keep]
        x = (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else np.zeros_like(x)
        # In threshold order, as `sklearn.metrics.auc` integrates there: FPR falls as thresholds rise, so the
        # trapezoid is negative; points of tied FPR keep their threshold order (re-sorting them changes the area).
        return float(-np.trapezoid(y, x))
    order = np.argsort(fpr, kind="stable")
    return _integrate(np.concatenate([[0.0], fpr[order]]), np.concatenate([[0.0], pro[order]]), fpr_limit)
