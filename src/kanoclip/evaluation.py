"""The zero-shot protocol's evaluation (SPEC §6, §7): a model over datasets, per-class and mean metrics, reports.

Memory is bounded by the largest class: its maps at the run resolution (518 by default) as float16 and its masks as
bool, freed before the next class. Undefined metrics (one label only, no masks) are NaN, shown as "—".
"""

from __future__ import annotations

import csv
import html
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import metrics
from ._files import atomic_write_bytes, atomic_write_json
from .datasets import DatasetIndex, Sample
from .datasets.base import sample_image, sample_mask
from .detection import Detector
from .visualize import overlay, to_png

COLUMNS = [
    ("image_auroc", "I-AUROC"),
    ("image_ap", "I-AP"),
    ("image_f1_max", "I-F1max"),
    ("pixel_auroc", "P-AUROC"),
    ("pixel_ap", "P-AP"),
    ("pixel_f1_max", "P-F1max"),
    ("aupro", "AUPRO"),
]
THUMB = 192


@dataclass
class Case:
    """One image shown in the report: a best (or worst) case of its class."""

    image: str
    label: int
    score: float
    kind: str  # "best" | "worst"
    picture: str = ""  # the image | ground truth | overlay strip, relative to the report


@dataclass
class ClassResult:
    dataset: str
    cls: str
    images: int
    anomalous: int
    metrics: dict[str, float]
    cases: list[Case] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    text: dict[str, Any] = field(default_factory=dict)  # what gave this class its text features


def class_metrics(
    labels: np.ndarray, scores: np.ndarray, masks: np.ndarray | None, maps: np.ndarray | None, aupro_method: str
) -> dict[str, float]:
    """Every metric of SPEC §6 for one class; pixel metrics need masks."""
    out = dict(zip(("image_auroc", "image_ap", "image_f1_max"), metrics.curve_metrics(labels, scores), strict=True))
    nan = float("nan")
    if masks is None or maps is None:
        return {**out, "pixel_auroc": nan, "pixel_ap": nan, "pixel_f1_max": nan, "aupro": nan}
    pixel = metrics.curve_metrics(masks, maps)
    out.update(zip(("pixel_auroc", "pixel_ap", "pixel_f1_max"), pixel, strict=True))
    out["aupro"] = metrics.aupro(masks, maps, method=aupro_method)
    return out


def evaluate_dataset(
    detector: Detector, index: DatasetIndex, out_dir: Path, cases: int = 3, aupro_method: str = "exact"
) -> list[ClassResult]:
    """Run the detector over every class of one dataset; write case pictures under `out_dir/assets`."""
    size = detector.image_size
    results = []
    name = index.root.name
    bar = tqdm(total=len(index.test), desc=f"evaluate {name}", unit="image")
    for cls, samples in index.by_class().items():
        detector.set_class(cls)  # training-free: this class's knowledge and prompt ensemble
        pixel_level = any(s.mask is not None for s in samples) and all(s.mask is not None for s in samples if s.label)
        collected = detector.collect([(s.image, s.crop) for s in samples], progress=bar)
        scores, maps, ok, unreadable = collected.scores, collected.maps, collected.ok, collected.failed
        labels = np.array([s.label for s in samples])
        masks = np.stack([sample_mask(s, size) for s in samples]) if pixel_level else None
        values = class_metrics(
            labels[ok],
            scores[ok],
            None if masks is None else masks[ok],
            maps[ok] if pixel_level else None,
            aupro_method,
        )
        result = ClassResult(
            name, cls, int(ok.sum()), int(labels[ok].sum()), values, unreadable=unreadable, text=detector.text_record
        )
        result.cases = _cases(samples, labels, scores, maps, out_dir, name, cls, cases)
        results.append(result)
    bar.close()
    return results


def _cases(
    samples: list[Sample],
    labels: np.ndarray,
    scores: np.ndarray,
    maps: np.ndarray,
    out_dir: Path,
    dataset: str,
    cls: str,
    count: int,
) -> list[Case]:
    """The `count` most and least correct images (by |label - score|), drawn as image | ground truth | overlay."""
    valid = np.flatnonzero(~np.isnan(scores))
    if count <= 0 or len(valid) == 0:
        return []
    order = valid[np.argsort(np.abs(labels[valid] - scores[valid]), kind="stable")]
    picks = [(i, "best") for i in order[:count]] + [(i, "worst") for i in order[::-1][:count] if i not in order[:count]]
    out = []
    for rank, (i, kind) in enumerate(picks):
        sample = samples[i]
        rgb = sample_image(sample)
        thumb = np.asarray(Image.fromarray(rgb).resize((THUMB, THUMB), Image.Resampling.BILINEAR))
        mask = sample_mask(sample, THUMB)
        gt = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
        if sample.mask is None:
            gt[:] = 64  # grey: no mask for this image
        amap = np.asarray(Image.fromarray(maps[i].astype(np.float32)).resize((THUMB, THUMB), Image.Resampling.BILINEAR))
        strip = np.concatenate([thumb, gt, overlay(thumb, amap, mask=mask)], axis=1)
        name = f"assets/{_slug(dataset)}__{_slug(cls)}__{kind}{rank}.png"
        atomic_write_bytes(out_dir / name, to_png(strip))
        out.append(Case(str(sample.image), int(labels[i]), float(scores[i]), kind, name))
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def mean_row(results: list[ClassResult]) -> dict[str, float]:
    """Per-metric mean over classes, ignoring undefined values; NaN when no class defines the metric."""
    out = {}
    for key, _ in COLUMNS:
        values = [r.metrics[key] for r in results if not math.isnan(r.metrics[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def _fmt(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.1f}"


def table_rows(results: list[ClassResult]) -> list[tuple[str, str, str, dict[str, float]]]:
    """(dataset, class, images, metrics) rows: each dataset's classes, then its mean."""
    rows = []
    for dataset in dict.fromkeys(r.dataset for r in results):
        group = [r for r in results if r.dataset == dataset]
        rows += [(dataset, r.cls, str(r.images), r.metrics) for r in group]
        rows.append((dataset, "mean", str(sum(r.images for r in group)), mean_row(group)))
    return rows


def markdown_table(results: list[ClassResult]) -> str:
    head = "| dataset | class | images | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COLUMNS))]
    for dataset, cls, n, values in table_rows(results):
        bold = "**" if cls == "mean" else ""
        cells = " | ".join(bold + _fmt(values[k]) + bold if not math.isnan(values[k]) else "—" for k, _ in COLUMNS)
        lines.append(f"| {dataset} | {bold}{cls}{bold} | {n} | {cells} |")
    return "\n".join(lines) + "\n"


def write_reports(results: list[ClassResult], out_dir: Path, info: dict[str, Any]) -> dict[str, Path]:
    """results.md, results.csv, results.json and report.html, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = markdown_table(results)
    atomic_write_bytes(out_dir / "results.md", ("Metrics in %, '—' = undefined.\n\n" + markdown).encode())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["dataset", "class", "images", *[k for k, _ in COLUMNS]])
    for dataset, cls, n, values in table_rows(results):
        writer.writerow([dataset, cls, n, *["" if math.isnan(values[k]) else f"{values[k]:.6f}" for k, _ in COLUMNS]])
    atomic_write_bytes(out_dir / "results.csv", buffer.getvalue().encode())
    document = {
        "info": info,
        "classes": [_jsonable(asdict(r)) for r in results],
        "means": {d: _jsonable(mean_row([r for r in results if r.dataset == d])) for d in {r.dataset for r in results}},
    }
    atomic_write_json(out_dir / "results.json", document)
    atomic_write_bytes(out_dir / "report.html", _html(results, info).encode())
    return {name: out_dir / name for name in ("results.md", "results.csv", "results.json", "report.html")}


def _jsonable(value: Any) -> Any:
    """NaN is not JSON: undefined metrics become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _html(results: list[ClassResult], info: dict[str, Any]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(label)}</th>" for _, label in COLUMNS)
    rows = []
    for dataset, cls, n, values in table_rows(results):
        style = ' class="mean"' if cls == "mean" else ""
        cells = "".join(f"<td>{_fmt(values[k])}</td>" for k, _ in COLUMNS)
        rows.append(f"<tr{style}><td>{esc(dataset)}</td><td>{esc(cls)}</td><td>{n}</td>{cells}</tr>")
    sections = []
    for r in results:
        figures = "".join(
            f'<figure><img src="{esc(c.picture)}" alt="{esc(c.kind)} case"><figcaption>{esc(c.kind)}: '
            f"{esc(Path(c.image).name)}, label {c.label}, score {c.score:.3f}</figcaption></figure>"
            for c in r.cases
        )
        problems = f"<p>unreadable: {esc('; '.join(r.unreadable))}</p>" if r.unreadable else ""
        sections.append(f"<h3>{esc(r.dataset)} / {esc(r.cls)}</h3>{problems}<div class='cases'>{figures}</div>")
    details = "".join(f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>" for k, v in info.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>kanoclip evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:right}}tr.mean{{font-weight:bold;background:#f2f2f2}}figure{{display:inline-block;
margin:4px}}figcaption{{font-size:12px}}</style></head><body>
<h1>kanoclip evaluation</h1><ul>{details}</ul>
<p>Metrics in %; "—" = undefined (one label only, or no masks). Each picture: image | ground truth (grey: no mask) |
anomaly map overlay (blue 0 to red 1, ground truth outlined in white).</p>
<table><tr><th>dataset</th><th>class</th><th>images</th>{head}</tr>{"".join(rows)}</table>
<h2>Best and worst cases</h2>{"".join(sections)}</body></html>
"""


def evaluate(
    detector: Detector,
    indices: list[DatasetIndex],
    out_dir: str | Path,
    cases: int = 3,
    aupro_method: str = "exact",
    info: dict[str, Any] | None = None,
) -> list[ClassResult]:
    """Evaluate every dataset, then write the tables and the HTML report into `out_dir`."""
    out = Path(out_dir)
    results = []
    for index in indices:
        results += evaluate_dataset(detector, index, out, cases, aupro_method)
    write_reports(results, out, info or {})
    return results
