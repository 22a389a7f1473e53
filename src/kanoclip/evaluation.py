"""The zero-shot protocol's evaluation (SPEC §6, §7): a model over datasets, per-class and mean metrics, reports.

Memory is bounded by the largest class: its maps at the run resolution (518 by default) as float16 and its masks as
bool, freed before the next class. Undefined metrics (one label only, no masks) are NaN, shown as "—".
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import distributed, metrics
from ._files import atomic_write_bytes, atomic_write_json
from .datasets import DatasetIndex, Sample
from .datasets.base import sample_image, sample_mask
from .detection import Detector
from .errors import DatasetError
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
    per_seed: list[dict[str, float]] = field(default_factory=list)  # few-shot: the metrics of each seed
    references: dict[str, list[str]] = field(default_factory=dict)  # few-shot: seed -> reference files


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
    detector: Detector,
    index: DatasetIndex,
    out_dir: Path,
    cases: int = 3,
    aupro_method: str = "exact",
    shots: int = 0,
    seeds: Sequence[int] = (0,),
) -> list[ClassResult]:
    """Run the detector over every class of one dataset; write case pictures under `out_dir/assets`.

    With `shots` > 0 (SPEC §9, I21): per class and seed, `shots` normal images drawn from the class's train split
    are the references; metrics are the mean over seeds (`per_seed` keeps each), and the files used are listed."""
    size = detector.image_size
    results = []
    name = index.root.name
    runs = list(seeds) if shots else [None]
    main = distributed.current().main
    bar = tqdm(total=len(index.test) * len(runs), desc=f"evaluate {name}", unit="image", disable=not main)
    for cls, samples in index.by_class().items():
        detector.set_class(cls)  # training-free: this class's knowledge and prompt ensemble
        pool = [s for s in index.train if s.cls == cls]
        if shots and len(pool) < shots:
            raise DatasetError(
                f"{name}/{cls}: --shots {shots} needs {shots} normal train images, the layout has {len(pool)} "
                "(few-shot references come from the train split: MVTec AD, VisA, MPDD, BTAD, KolektorSDD thirds ...)"
            )
        pixel_level = any(s.mask is not None for s in samples) and all(s.mask is not None for s in samples if s.label)
        labels = np.array([s.label for s in samples])
        masks = np.stack([sample_mask(s, size) for s in samples]) if pixel_level else None
        per_seed, references = [], {}
        for seed in runs:
            if seed is not None:
                picks = [pool[i] for i in sorted(np.random.default_rng(seed).choice(len(pool), shots, replace=False))]
                detector.clear_references()
                detector.add_references([sample_image(p) for p in picks])
                references[str(seed)] = [_describe_sample(p) for p in picks]
            collected = detector.collect([(s.image, s.crop) for s in samples], progress=bar)
            if collected is None:  # another rank under torchrun: rank 0 computes the metrics
                continue
            ok = collected.ok
            per_seed.append(
                class_metrics(
                    labels[ok],
                    collected.pred_scores[ok],
                    None if masks is None else masks[ok],
                    collected.anomaly_maps[ok] if pixel_level else None,
                    aupro_method,
                )
            )
        if shots:
            detector.clear_references()
        if collected is None:
            continue
        values = {k: float(np.mean([m[k] for m in per_seed])) for k in per_seed[0]}
        result = ClassResult(
            name,
            cls,
            int(ok.sum()),
            int(labels[ok].sum()),
            values,
            unreadable=collected.failed,
            text=detector.text_record,
            per_seed=per_seed if shots else [],
            references=references,
        )
        result.cases = _cases(samples, labels, collected.pred_scores, collected.anomaly_maps, out_dir, name, cls, cases)
        results.append(result)
    bar.close()
    return results


def _describe_sample(sample: Sample) -> str:
    return str(sample.image) + ("" if sample.crop is None else f" crop {list(sample.crop)}")


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


def std_row(results: list[ClassResult]) -> dict[str, float]:
    """Few-shot: the standard deviation over seeds of the class mean (NaN without seeds)."""
    seeds = min((len(r.per_seed) for r in results), default=0)
    out = {}
    for key, _ in COLUMNS:
        means = []
        for i in range(seeds):
            values = [r.per_seed[i][key] for r in results if not math.isnan(r.per_seed[i][key])]
            means.append(float(np.mean(values)) if values else float("nan"))
        out[key] = float(np.std(means)) if len(means) > 1 else float("nan")
    return out


def _fmt(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.1f}"


def table_rows(results: list[ClassResult]) -> list[tuple[str, str, str, dict[str, float], dict[str, float]]]:
    """(dataset, class, images, metrics, std over seeds) rows: each dataset's classes, then its mean."""
    rows = []
    for dataset in dict.fromkeys(r.dataset for r in results):
        group = [r for r in results if r.dataset == dataset]
        rows += [(dataset, r.cls, str(r.images), r.metrics, std_row([r])) for r in group]
        rows.append((dataset, "mean", str(sum(r.images for r in group)), mean_row(group), std_row(group)))
    return rows


def markdown_table(results: list[ClassResult]) -> str:
    head = "| dataset | class | images | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COLUMNS))]
    for dataset, cls, n, values, std in table_rows(results):
        bold = "**" if cls == "mean" else ""
        cells = " | ".join(
            bold + _fmt(values[k]) + ("" if math.isnan(std[k]) else f" ± {_fmt(std[k])}") + bold
            if not math.isnan(values[k])
            else "—"
            for k, _ in COLUMNS
        )
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
    for dataset, cls, n, values, _ in table_rows(results):
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
    for dataset, cls, n, values, _ in table_rows(results):
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
    shots: int = 0,
    seeds: Sequence[int] = (0, 1, 2),
) -> list[ClassResult]:
    """Evaluate every dataset, then write the tables and the HTML report into `out_dir`."""
    out = Path(out_dir)
    results = []
    for index in indices:
        results += evaluate_dataset(detector, index, out, cases, aupro_method, shots, seeds)
    if distributed.current().main:
        write_reports(results, out, info or {})
    return results
