"""The one writer of detect outputs, shared by local `detect`, `detect --ray` and the services built on them.

A run folder holds `run.json` (what produced the outputs), `scores.csv` (path, score[, label][, map][, defect_type,
defect_type_p]) and per image
`maps/<name>.npy` (the map at the image's own size), `<name>.overlay.png` and, with a pixel threshold,
`<name>.mask.png`; `<name>` is the image's path below the inputs' common folder, suffix included, so every image has
its own files. Every file is written atomically; the label column follows the thresholds in `run.json`, the defect
type columns its `defect_typing` (present when the run types defects: empty for images judged normal).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from kanoclip._files import (
    atomic_write_bytes,
    atomic_write_json,
    from_spreadsheet,
    npy_bytes,
    read_json_object,
    spreadsheet_safe,
)
from kanoclip.data.images import to_png
from kanoclip.data.inputs import expand_inputs, output_names
from kanoclip.errors import ConfigError
from kanoclip.inference.config import RunConfig
from kanoclip.inference.detector import Detector, Prediction
from kanoclip.inference.overlays import mask_image
from kanoclip.labels import word

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
    defect_type: str | None = None  # judged anomalous and typed: the type, or "unknown"
    defect_type_p: float | None = None


@dataclass
class DetectSummary:
    images: int
    failed: list[tuple[str, str]]
    skipped_masks: int
    scores_csv: Path


class RunFolder:
    """A detect run's folder: `run.json` first, then each image's files, then `scores.csv`. One run per folder: a
    rerun with the same identity resumes, another run is refused unless asked to start over."""

    OURS = (RUN, SCORES, f"{SCORES}.partial", "maps", "ray")
    TYPED = ("defect_type", "defect_type_p")  # the last two columns, when the run types defects

    def __init__(self, out: str | Path, save_maps: bool = True) -> None:
        self.out, self.save_maps = Path(out), save_maps
        self._typed: bool | None = None  # read from run.json when first asked

    def prepare(self, identity: str, overwrite: bool = False) -> bool:
        """Make the folder ready for the run `identity`; True when it resumes that run. Another run's outputs are
        refused, or with `overwrite` removed (only kanoclip's own files: anything else in the folder stays)."""
        self.out.mkdir(parents=True, exist_ok=True)
        present = [name for name in self.OURS if (self.out / name).exists()]
        if not present:
            return False
        previous = self.read_run().get("run_id") if (self.out / RUN).is_file() else None
        if previous == identity:
            return True
        if not overwrite:
            raise ConfigError(
                f"{self.out} holds the outputs of another run ({', '.join(present)}; run {previous}): use another "
                "--out, or --overwrite to replace them"
            )
        for name in present:
            target = self.out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        return False

    def write_run(self, inputs: Sequence[str | Path], described: dict[str, Any], identity: str) -> None:
        """`run.json`: the run's identity, the inputs as given and what the detector says produced the outputs."""
        document = {"run_id": identity, "inputs": [str(i) for i in inputs], **described}
        atomic_write_json(self.out / RUN, document, indent=2)
        self._typed = described.get("defect_typing") is not None

    def read_run(self) -> dict[str, Any]:
        return read_json_object(self.out / RUN, ConfigError, "run detect again", "run detect again")

    def labelled(self) -> bool:
        """A label column exactly when the run had an image threshold."""
        return self.read_run()["thresholds"]["image_threshold"] is not None

    @property
    def typed(self) -> bool:
        """Defect type columns exactly when the run typed defects (run.json's `defect_typing`)."""
        if self._typed is None:
            self._typed = self.read_run().get("defect_typing") is not None
        return self._typed

    def write_image(self, name: str, p: Prediction, detector: Detector) -> Row:
        """One image's files (map, overlay on the detector's colour scale, mask), each atomically, and its row."""
        if p.error is not None or p.pred_score is None or p.anomaly_map is None:
            return Row(p.source, error=p.error or "unknown error")
        map_file = f"maps/{name}.npy"
        if self.save_maps and p.image is not None:
            atomic_write_bytes(self.out / map_file, npy_bytes(p.anomaly_map))
            picture = detector.paint(p.image, p)
            atomic_write_bytes(self.out / f"maps/{name}.overlay.png", to_png(picture))
            if p.pred_mask is not None:
                atomic_write_bytes(self.out / f"maps/{name}.mask.png", to_png(mask_image(p.pred_mask)))
        return Row(
            p.source, p.pred_score, p.pred_label, map_file, defect_type=p.defect_type, defect_type_p=p.defect_type_p
        )

    def header(self, labelled: bool) -> list[str]:
        maps = ["map"] if self.save_maps else []
        return ["path", "score", *(["label"] if labelled else []), *maps, *(self.TYPED if self.typed else ())]

    def line(self, row: Row, labelled: bool) -> list[Any]:
        """A row's cells; text a client or a folder named (path, type) is quoted if a spreadsheet would run it."""
        assert row.score is not None
        label = [row.label] if labelled else []
        cells = [row.path, f"{row.score:.6f}", *label, *([row.map] if self.save_maps else [])]
        if self.typed:
            cells += [row.defect_type or "", "" if row.defect_type_p is None else f"{row.defect_type_p:.6f}"]
        return [spreadsheet_safe(c) for c in cells]

    def scored_rows(self, labelled: bool) -> dict[str, Row]:
        """The rows a run of this folder finished (scores.csv, else the .partial one; a torn last line dropped)."""
        source = next((self.out / n for n in (SCORES, f"{SCORES}.partial") if (self.out / n).is_file()), None)
        if source is None:
            return {}
        rows: dict[str, Row] = {}
        text = source.read_text()
        lines = text.splitlines()[: None if text.endswith("\n") else -1]  # a line without its end was cut short
        fields = self.header(labelled)
        for record in csv.DictReader(lines):
            try:
                if any(record.get(f) in (None, "") for f in fields if f not in self.TYPED):  # empty when judged normal
                    continue
                path, amap = from_spreadsheet(record["path"]), record.get("map")
                kind, chance = record.get("defect_type") or None, record.get("defect_type_p") or None
                rows[path] = Row(
                    path,
                    float(record["score"]),
                    int(record["label"]) if labelled else None,
                    None if amap is None else from_spreadsheet(amap),
                    defect_type=None if kind is None else from_spreadsheet(kind),
                    defect_type_p=None if chance is None else float(chance),
                )
            except ValueError:
                continue  # a line cut short by a crash
        return rows

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


def run_identity(run: RunConfig, inputs: Sequence[str | Path], save_maps: bool, **more: Any) -> str:
    """What makes two runs the same run: every run option but the decoding workers and which options the user typed,
    the inputs as given, the map option and `more` (e.g. the detector's threshold basis, or that it ran on Ray)."""
    fields = {k: v for k, v in dataclasses.asdict(run).items() if k not in ("workers", "user_set")}
    document = {"run": fields, "inputs": [str(i) for i in inputs], "save_maps": save_maps, **more}
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[:16]


def detect_files(
    detector: Detector,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    save_maps: bool = True,
    overwrite: bool = False,
) -> DetectSummary:
    """`kanoclip detect` on this machine. Rows reach `scores.csv.partial` as images finish, so a crash keeps what
    was done; rerun, the same run skips what it finished. `scores.csv` is written whole, in input order, at the
    end. The output folder is never scored as an input."""
    detector.check_thresholds()
    folder = RunFolder(out_dir, save_maps)
    paths, skipped = expand_inputs(inputs, exclude=folder.out)
    identity = run_identity(detector.run_config, inputs, save_maps, basis=detector.threshold_basis(), on="local")
    labelled = detector.thresholds.image_threshold is not None
    resumed = folder.prepare(identity, overwrite)
    done = folder.scored_rows(labelled) if resumed else {}
    if resumed:  # the overlays of a resumed run keep the scale its first batch set
        detector.resume_overlay_scale(folder.read_run().get("overlay_scale"))
    folder.write_run(inputs, detector.describe(), identity)
    scale_recorded = detector.overlay_scale_fitted
    todo = [p for p in paths if str(p) not in done]
    if done:
        print(f"{len(paths)} images; {len(paths) - len(todo)} already scored in {folder.out}; {len(todo)} to score")
    names = dict(zip(paths, output_names(paths), strict=True))
    partial = folder.out / f"{SCORES}.partial"
    buffer = io.StringIO()
    csv.writer(buffer).writerows([folder.header(labelled), *(folder.line(r, labelled) for r in done.values())])
    atomic_write_bytes(partial, buffer.getvalue().encode())
    rows = dict(done)
    bar = tqdm(total=len(todo), desc="detect", unit="image")
    with partial.open("a", newline="") as f:
        writer = csv.writer(f)
        for path, p in zip(todo, detector.run(todo, keep_image=save_maps, progress=bar), strict=True):
            if not scale_recorded and detector.overlay_scale_fitted:  # run.json says which scale the first batch set
                folder.write_run(inputs, detector.describe(), identity)
                scale_recorded = True
            rows[str(path)] = row = folder.write_image(names[path], p, detector)
            if row.error is None:
                writer.writerow(folder.line(row, labelled))
                f.flush()
    bar.close()
    failed = folder.write_scores((rows[str(p)] for p in paths), labelled)
    partial.unlink()
    return DetectSummary(len(paths), failed, skipped, folder.out / SCORES)


def detect_video(
    detector: Detector,
    video: str,
    out_dir: str | Path,
    fps: float | None = 1.0,
    save_maps: bool = True,
    annotate: bool = False,
    overwrite: bool = False,
) -> DetectSummary:
    """`kanoclip detect VIDEO`: one row per sampled frame (`VIDEO#frame=N`) in `scores.csv`, each frame's files as
    for an image (`maps/frame_NNNNNN...`), and with `annotate` `annotated.mp4`: the overlay and score on each sampled
    frame, at the sampled rate."""
    from kanoclip.data.video import frames, opencv

    detector.check_thresholds()
    folder = RunFolder(out_dir, save_maps)
    identity = run_identity(detector.run_config, [video], save_maps, basis=detector.threshold_basis(), fps=fps)
    folder.prepare(identity, overwrite)  # a video is scored whole: a rerun starts it over
    folder.write_run([video], {**detector.describe(), "fps": fps}, identity)
    labelled = detector.thresholds.image_threshold is not None
    rows: list[Row] = []
    writer: Any = None
    cv2 = opencv() if annotate else None
    bar = tqdm(desc="detect", unit="frame")
    try:
        batch: list[Any] = []
        for frame in itertools.chain(frames(video, fps), [None]):  # None: flush the last batch
            if frame is not None:
                if frame.rgb is None:
                    rows.append(Row(f"{video}#frame={frame.index}", error=f"frame {frame.index}: {frame.error}"))
                    continue
                batch.append(frame)
                if len(batch) < detector.batch_size:
                    continue
            if not batch:
                break
            for f, p in zip(batch, detector.predict_many([f.rgb for f in batch]), strict=True):
                p.source, p.image = f"{video}#frame={f.index}", f.rgb
                rows.append(folder.write_image(f"frame_{f.index:06d}", p, detector))
                if cv2 is not None and p.anomaly_map is not None:
                    picture = np.ascontiguousarray(detector.paint(f.rgb, p)[:, :, ::-1])
                    text = f"{p.pred_score:.4f}" + ("" if p.pred_label is None else " " + word(p.pred_label))
                    cv2.putText(picture, text, (8, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
                    if writer is None:
                        size = (picture.shape[1], picture.shape[0])
                        rate = fps or 25.0
                        writer = cv2.VideoWriter(
                            str(folder.out / "annotated.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), rate, size
                        )
                    writer.write(picture)
            bar.update(len(batch))
            batch = []
    finally:
        bar.close()
        if writer is not None:
            writer.release()
    folder.write_run([video], {**detector.describe(), "fps": fps}, identity)  # with the scale the first batch set
    failed = folder.write_scores(rows, labelled)
    return DetectSummary(len(rows), failed, 0, folder.out / SCORES)
