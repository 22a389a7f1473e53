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

from .errors import ConfigError


@dataclass(frozen=True)
class Thresholds:
    """`image`: score >= image is anomalous; `map`: pixels >= map form the predicted mask. None: not calibrated."""

    image: float | None = None
    map: float | None = None

    @classmethod
    def from_calibration(cls, calibration: dict[str, Any] | None) -> Thresholds:
        calibration = calibration or {}
        image, amap = calibration.get("image_threshold"), calibration.get("map_threshold")
        return cls(None if image is None else float(image), None if amap is None else float(amap))


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
