"""Thresholds people can trust (`kanoclip calibrate`): a score only becomes a decision with a threshold.

With normal and anomalous images: the F1-max threshold, with its precision and recall. With normal images only: the
score above which at most the target share of normal images falls (the false-alarm rate), with the number of images
it rests on. The same for maps, per pixel. Stored in the checkpoint's JSON, or a standalone JSON in training-free mode.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from tqdm import tqdm

from kanoclip._files import atomic_write_json
from kanoclip.data.datasets import Sample
from kanoclip.data.datasets.base import sample_mask
from kanoclip.errors import ConfigError
from kanoclip.evaluation import metrics
from kanoclip.inference.detector import Detector
from kanoclip.model import checkpoint

MIN_EXPECTED_ALARMS = 10  # below this many expected false alarms the realised rate is too uncertain to promise


@dataclass
class Threshold:
    value: float
    method: str  # "f1_max" | "false_alarm_rate"
    images: int  # what it rests on
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    false_alarm_rate: float | None = None  # the target
    warning: str | None = None


def f1_max_threshold(labels: ArrayLike, scores: ArrayLike) -> Threshold:
    """The threshold of the best F1 (score >= threshold is anomalous), with its precision and recall."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores).ravel()  # maps stay float16: no float64 copy of every pixel
    if y.all() or not y.any():
        raise ConfigError("F1-max calibration needs both normal and anomalous images")
    f1, value = metrics.f1_max_threshold(y, s)
    flagged = s >= value
    tp = int((flagged & y).sum())
    precision, recall = tp / max(int(flagged.sum()), 1), tp / int(y.sum())
    return Threshold(float(value), "f1_max", int(y.size), precision, recall, float(f1))


def false_alarm_threshold(normal_scores: ArrayLike, rate: float, unit: str = "images") -> Threshold:
    """The lowest threshold at which at most `rate` of the normal scores reach it (score >= threshold): just above the
    (allowed + 1)-th largest score, so ties at the cut stay below. A partition finds it in linear time and in the
    scores' own dtype (a per-pixel calibration holds millions of float16 values: no float64 sort)."""
    if not 0 < rate < 1:
        raise ConfigError(f"the false-alarm rate must be in (0, 1), got {rate}")
    s = np.asarray(normal_scores).ravel()
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if s.size == 0:
        raise ConfigError("calibration needs at least one normal image")
    allowed = math.floor(rate * s.size)  # false alarms permitted among these normals
    k = s.size - 1 - allowed  # ascending index of the (allowed + 1)-th largest
    cut = np.partition(s, k)[k]
    value = float(np.nextafter(cut, cut.dtype.type(np.inf)))  # the next value of the scores' own dtype
    warning = None
    if rate * s.size < MIN_EXPECTED_ALARMS:
        need = math.ceil(MIN_EXPECTED_ALARMS / rate)
        warning = (
            f"only {s.size} normal {unit} for a {rate:g} false-alarm rate: the realised rate is uncertain (fewer than "
            f"{MIN_EXPECTED_ALARMS} expected false alarms); use at least {need} {unit}"
        )
    return Threshold(value, "false_alarm_rate", int(s.size), false_alarm_rate=rate, warning=warning)


def calibrate(
    detector: Detector, normal: list[Sample], anomalous: list[Sample], false_alarm_rate: float = 0.01
) -> dict[str, Any]:
    """Image and map thresholds from the detector's outputs on the given images (masks optional)."""
    samples = normal + anomalous
    if not normal:
        raise ConfigError("calibration needs normal images (a folder of good parts)")
    size = detector.image_size
    pixel_f1 = bool(anomalous) and all(s.mask is not None for s in anomalous)
    with tqdm(total=len(samples), desc="calibrate", unit="image") as bar:
        collected = detector.collect([(s.image, s.crop) for s in samples], progress=bar)
    if collected is None:
        raise ConfigError("calibrate runs in one process: start it without torchrun")
    scores, maps, ok = collected.pred_scores, collected.anomaly_maps, collected.ok
    labels = np.array([s.label for s in samples])
    if anomalous:
        image = f1_max_threshold(labels[ok], scores[ok])
    else:
        image = false_alarm_threshold(scores[ok & (labels == 0)], false_alarm_rate)
    if pixel_f1:
        masks = np.stack([sample_mask(s, size) for s in samples])[ok]
        pixel = f1_max_threshold(masks, maps[ok])
        pixel.images = int(ok.sum())
    else:
        pixel = false_alarm_threshold(maps[ok & (labels == 0)], false_alarm_rate, unit="pixels")
        pixel.images = int((ok & (labels == 0)).sum())
    return {
        "image_threshold": image.value,
        "pixel_threshold": pixel.value,
        "image": asdict(image),
        "pixel": asdict(pixel),
        "basis": detector.threshold_basis(),
        "unreadable": collected.failed,
    }


def store(calibration: dict[str, Any], detector: Detector, out: str | Path | None = None) -> Path:
    """Into the checkpoint's config.json, or (training-free) a standalone JSON with the model config beside it."""
    if detector.checkpoint is not None and out is None:
        checkpoint.update_document(detector.checkpoint, "calibration", calibration)
        return detector.checkpoint / checkpoint.CONFIG
    path = Path(out or "calibration.json")
    document = {"model": detector.config.to_dict(), "calibration": calibration}
    atomic_write_json(path, document)
    return path
