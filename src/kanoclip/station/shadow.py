"""The shadow evaluation: a model measured on the profile's labelled history before it scores anything.

Each image the profile was given a verdict on counts once, labelled as its latest verdict says (good 0, defect 1).
A model is measured as it would run once current: its bank built from the profile's good parts, its thresholds
calibrated as `calibrate` does (`teaching.calibrated`). A good part of the bank is scored leave-one-out, as if new
(against itself it would score nothing); every other image against the whole bank. The numbers are image AUROC
(None with a single class), and precision, recall and F1 of the label `score >= image threshold`, with the counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kanoclip.evaluation.metrics import image_auroc
from kanoclip.inference.detector import Detector
from kanoclip.station.banks import fresh_bank
from kanoclip.station.store import sha256_of
from kanoclip.station.teaching import calibrated

LABELS = {"good": 0, "defect": 1}


def shadow_scores(
    det: Detector,
    references: Sequence[tuple[str, bytes]],
    history: Sequence[tuple[int, bytes, str]],
) -> tuple[dict[str, Any], list[float | None]]:
    """`det` (its bank replaced by one of `references`) calibrated and run on the labelled `history` rows
    (result id, image, verdict): its calibration and one score per row (None: the image could not be scored)."""
    det.use_references(fresh_bank(det, [data for _, data in references]))
    held = {sha256_of(data) for _, data in references}
    defects = [data for _, data, verdict in history if verdict == "defect" and sha256_of(data) not in held]
    calibration = calibrated(det, references, defects)
    left_out = {entry["sha256"]: entry["score"] for entry in calibration["leave_one_out"]}
    scores: list[float | None] = []
    for i in range(0, len(history), det.batch_size):
        batch = history[i : i + det.batch_size]
        fresh = [data for _, data, _ in batch if sha256_of(data) not in left_out]
        predicted = iter(det.predict_many(fresh) if fresh else [])
        for _, data, _ in batch:
            sha = sha256_of(data)
            score = left_out[sha] if sha in left_out else next(predicted).pred_score
            scores.append(None if score is None else float(score))  # an image that cannot be scored: no number
    return calibration, scores


def numbers(labels: Sequence[int], scores: Sequence[float | None], threshold: float | None) -> dict[str, Any]:
    """Image AUROC and, at `threshold`, the confusion counts, precision, recall and F1 (anomalous = positive), over
    the rows with a score."""
    scored = [(y, s) for y, s in zip(labels, scores, strict=True) if s is not None and np.isfinite(s)]
    y = np.asarray([y for y, _ in scored], dtype=int)
    s = np.asarray([s for _, s in scored], dtype=np.float64)
    out: dict[str, Any] = {
        "rows": int(y.size),
        "good": int((y == 0).sum()),
        "defect": int((y == 1).sum()),
        "image_auroc": float(image_auroc(y, s)) if 0 < y.sum() < y.size else None,
        "threshold": threshold,
    }
    if threshold is None:
        return out | {"tp": None, "fp": None, "fn": None, "tn": None, "precision": None, "recall": None, "f1": None}
    predicted = s >= threshold
    tp, fp = int((predicted & (y == 1)).sum()), int((predicted & (y == 0)).sum())
    fn, tn = int((~predicted & (y == 1)).sum()), int((~predicted & (y == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return out | {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall, "f1": f1}
