"""Decision thresholds, as a value the Detector takes; the one place that reads them from a file.

A checkpoint carries its thresholds in its JSON document (section "calibration"); training-free runs keep them in
a standalone JSON written by `kanoclip calibrate`, with the model config they were chosen on.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kanoclip.errors import ConfigError


@dataclass(frozen=True)
class Thresholds:
    """anomalib's names: a score >= `image_threshold` is anomalous; pixels >= `pixel_threshold` form the predicted
    mask. None: not calibrated. `basis` records what they were set on (`Detector.threshold_basis`: class text, bank,
    numerics, checkpoint, backbone), so that using them on anything else is caught; None: the user's own numbers."""

    image_threshold: float | None = None
    pixel_threshold: float | None = None
    basis: dict[str, Any] | None = None

    @property
    def set(self) -> bool:
        return self.image_threshold is not None or self.pixel_threshold is not None

    @classmethod
    def from_calibration(cls, calibration: dict[str, Any] | None) -> Thresholds:
        """From a calibration section; files written before the rename call the pixel threshold `map_threshold`."""
        calibration = calibration or {}
        image = calibration.get("image_threshold")
        pixel = calibration.get("pixel_threshold", calibration.get("map_threshold"))
        basis = calibration.get("basis")
        return cls(
            None if image is None else float(image),
            None if pixel is None else float(pixel),
            basis if isinstance(basis, dict) else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"image_threshold": self.image_threshold, "pixel_threshold": self.pixel_threshold, "basis": self.basis}

    def stale(self, current: dict[str, Any]) -> str | None:
        """What differs between the basis these thresholds were set on and `current`, or None when they apply."""
        if not self.set or self.basis is None:
            return None
        changed = [k for k in self.basis if json.dumps(self.basis[k]) != json.dumps(current.get(k))]
        if not changed:
            return None
        return "; ".join(f"{k}: calibrated on {self.basis[k]!r}, now {current.get(k)!r}" for k in changed)


def read_standalone(path: str | Path, config: dict[str, Any] | None = None) -> tuple[Thresholds, dict[str, Any]]:
    """A standalone calibration file -> its thresholds and the whole calibration section. Warns when it was chosen on
    another model config than `config`."""
    try:
        document = json.loads(Path(path).expanduser().read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read calibration file {path}: {e}") from e
    if not isinstance(document, dict) or "calibration" not in document:
        raise ConfigError(f"{path} is not a calibration file (written by `kanoclip calibrate`)")
    if config is not None and document.get("model") != json.loads(json.dumps(config)):  # tuples are lists in JSON
        warnings.warn(f"{path} was calibrated on another model config; its thresholds may not fit", stacklevel=2)
    calibration: dict[str, Any] = document["calibration"]
    return Thresholds.from_calibration(calibration), calibration
