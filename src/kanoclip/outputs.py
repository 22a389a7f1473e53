"""The one writer of detect outputs, shared by local `detect`, `detect --ray` and the services built on them.

A run folder holds `run.json` (what produced the outputs), `scores.csv` (path, score[, label][, map]) and per image
`maps/<name>.npy` (the map at the image's own size), `<name>.overlay.png` and, with a pixel threshold,
`<name>.mask.png`; `<name>` is the image's path below the inputs' common folder, suffix included, so every image has
its own files. Every file is written atomically; the label column follows the thresholds in `run.json`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ._files import atomic_write_bytes, atomic_write_json, npy_bytes, read_json_object
from .detection import Detector, Prediction
from .errors import ConfigError
from .inputs import expand_inputs, output_names
from .visualize import mask_image, overlay, to_png

RUN = "run.json"
SCORES = "scores.csv"


@dataclass
class Row:
    """One image's line of scores.csv; `error` set (and the rest None) when it could not be read."""

    path: str
    score: float | None = None
    label: int | None = None
    map: str | None = None
    error: str | None = None


@dataclass
class DetectSummary:
    images: int
    failed: list[tuple[str, str]]
    skipped_masks: int
    scores_csv: Path


class RunFolder:
    """A detect run's folder: `run.json` first, then each image's files, then `scores.csv`."""

    def __init__(self, out: str | Path, save_maps: bool = True) -> None:
        self.out, self.save_maps = Path(out), save_maps

    def write_run(self, inputs: Sequence[str | Path], described: dict[str, Any]) -> None:
        """`run.json`: the inputs as given and what the detector says produced the outputs."""
        atomic_write_json(self.out / RUN, {"inputs": [str(i) for i in inputs], **described}, indent=2)

    def read_run(self) -> dict[str, Any]:
        return read_json_object(self.out / RUN, ConfigError, "run detect again", "run detect again")

    def labelled(self) -> bool:
        """A label column exactly when the run had an image threshold."""
        return self.read_run()["thresholds"]["image_threshold"] is not None

    def write_image(self, name: str, p: Prediction) -> Row:
        """One image's files (map, overlay, mask), each atomically, and its row."""
        if p.error is not None or p.pred_score is None or p.anomaly_map is None:
            return Row(p.source, error=p.error or "unknown error")
        map_file = f"maps/{name}.npy"
        if self.save_maps and p.image is not None:
            atomic_write_bytes(self.out / map_file, npy_bytes(p.anomaly_map))
            picture = overlay(p.image, p.anomaly_map, mask=p.pred_mask)
            atomic_write_bytes(self.out / f"maps/{name}.overlay.png", to_png(picture))
            if p.pred_mask is not None:
                atomic_write_bytes(self.out / f"maps/{name}.mask.png", to_png(mask_image(p.pred_mask)))
        return Row(p.source, p.pred_score, p.pred_label, map_file)

    def header(self, labelled: bool) -> list[str]:
        return ["path", "score", *(["label"] if labelled else []), *(["map"] if self.save_maps else [])]

    def line(self, row: Row, labelled: bool) -> list[Any]:
        assert row.score is not None
        label = [row.label] if labelled else []
        return [row.path, f"{row.score:.6f}", *label, *([row.map] if self.save_maps else [])]

    def write_scores(self, rows: Iterable[Row], labelled: bool) -> list[tuple[str, str]]:
        """`scores.csv` from rows in input order, written whole (atomically); returns the failed ones."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(self.header(labelled))
        failed = []
        for row in rows:
            if row.error is not None:
                failed.append((row.path, row.error))
            else:
                writer.writerow(self.line(row, labelled))
        atomic_write_bytes(self.out / SCORES, buffer.getvalue().encode())
        return failed


def detect_files(
    detector: Detector,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    save_maps: bool = True,
) -> DetectSummary:
    """`kanoclip detect` on this machine. Rows reach `scores.csv.partial` as images finish, so a crash keeps what
    was done; the file is renamed when complete."""
    detector.check_thresholds()
    paths, skipped = expand_inputs(inputs)
    folder = RunFolder(out_dir, save_maps)
    folder.out.mkdir(parents=True, exist_ok=True)
    folder.write_run(inputs, detector.describe())
    labelled = detector.thresholds.image_threshold is not None
    failed: list[tuple[str, str]] = []
    partial = folder.out / f"{SCORES}.partial"
    bar = tqdm(total=len(paths), desc="detect", unit="image")
    with partial.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(folder.header(labelled))
        predictions = detector.run(paths, keep_image=save_maps, progress=bar)
        for name, p in zip(output_names(paths), predictions, strict=True):
            row = folder.write_image(name, p)
            if row.error is not None:
                failed.append((row.path, row.error))
                continue
            writer.writerow(folder.line(row, labelled))
            f.flush()
    bar.close()
    partial.replace(folder.out / SCORES)
    return DetectSummary(len(paths), failed, skipped, folder.out / SCORES)
