"""Slow, obvious implementations of the metrics, written from their definitions, for the tests to compare against.

The benchmark of AUPRO speed also uses `aupro_200_loop` as its baseline: it is the connected-component loop of the
AnomalyCLIP / APRIL-GAN / cflow-ad evaluation code, written out again here.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=bool)


def auroc_pairwise(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + ½ P(equal), over every pair."""
    pos, neg = scores[labels.astype(bool)], scores[~labels.astype(bool)]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    equal = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * equal) / (len(pos) * len(neg)))


def roc_points(labels: np.ndarray, scores: np.ndarray) -> list[tuple[float, float, int, int]]:
    """(threshold, ..., tp, fp) at each distinct score, from the highest down: one pass over all items per threshold."""
    y = labels.astype(bool).ravel()
    s = scores.ravel()
    rows = []
    for t in sorted(set(s.tolist()), reverse=True):
        predicted = s >= t
        rows.append((t, 0.0, int((predicted & y).sum()), int((predicted & ~y).sum())))
    return rows


def auroc_by_thresholds(labels: np.ndarray, scores: np.ndarray) -> float:
    y = labels.astype(bool).ravel()
    p, n = y.sum(), (~y).sum()
    area, prev_tpr, prev_fpr = 0.0, 0.0, 0.0
    for _, _, tp, fp in roc_points(labels, scores):
        tpr, fpr = tp / p, fp / n
        area += (fpr - prev_fpr) * (tpr + prev_tpr) / 2
        prev_tpr, prev_fpr = tpr, fpr
    return area


def average_precision_loop(labels: np.ndarray, scores: np.ndarray) -> float:
    p = labels.astype(bool).sum()
    ap, prev_recall = 0.0, 0.0
    for _, _, tp, fp in roc_points(labels, scores):
        recall = tp / p
        ap += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return ap


def f1_max_loop(labels: np.ndarray, scores: np.ndarray) -> float:
    p = labels.astype(bool).sum()
    best = 0.0
    for _, _, tp, fp in roc_points(labels, scores):
        if tp:
            precision, recall = tp / (tp + fp), tp / p
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def pro_curve(masks: np.ndarray, maps: np.ndarray, thresholds: list[float], strict: bool) -> list[tuple[float, float]]:
    """(FPR, PRO) per threshold: regions labelled again for every image at every threshold, as the original loop."""
    masks = masks.astype(bool)
    normals = (~masks).sum()
    points = []
    for t in thresholds:
        predicted = maps > t if strict else maps >= t
        overlaps = []
        for mask, pred in zip(masks, predicted, strict=True):
            labelled, n = ndimage.label(mask, structure=EIGHT)
            for region in range(1, n + 1):
                inside = labelled == region
                overlaps.append(pred[inside].sum() / inside.sum())
        fp = (predicted & ~masks).sum()
        points.append((fp / normals, float(np.mean(overlaps))))
    return points


def trapezoid_to_limit(points: list[tuple[float, float]], limit: float) -> float:
    """Area under a curve given by points with non-decreasing x, from x=0 to x=limit, closed by interpolation."""
    area = 0.0
    (x0, y0) = points[0]
    for x1, y1 in points[1:]:
        if x1 > limit:
            y_at = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            return (area + (limit - x0) * (y0 + y_at) / 2) / limit
        area += (x1 - x0) * (y0 + y1) / 2
        x0, y0 = x1, y1
    return area / limit


def aupro_exact_loop(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    thresholds = sorted(set(maps.ravel().tolist()), reverse=True)
    return trapezoid_to_limit([(0.0, 0.0), *pro_curve(masks, maps, thresholds, strict=False)], limit)


def aupro_200_loop(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    """AnomalyCLIP's variant: 200 linear thresholds, map > t, keep FPR < limit, min-max rescaled FPR, then
    `sklearn.metrics.auc` on the points in threshold order, exactly as AnomalyCLIP's `cal_pro_score` calls it."""
    from sklearn.metrics import auc

    lo, hi = maps.min(), maps.max()
    thresholds = list(np.arange(lo, hi, (hi - lo) / 200))
    points = [(f, p) for f, p in pro_curve(masks, maps, thresholds, strict=True) if f < limit]
    xs = np.array([f for f, _ in points])
    ys = np.array([p for _, p in points])
    xs = (xs - xs.min()) / (xs.max() - xs.min())
    return float(auc(xs, ys))
