"""The zero-shot protocol's evaluation (SPEC §6, §7): a model over datasets, per-class and mean metrics, reports.

Memory is bounded by the largest class: its maps at the run resolution (518 by default) as float16 and its masks as
bool, freed before the next class. Undefined metrics (one label only, no masks) are NaN, shown as "—".
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from kanoclip._files import atomic_write_bytes, atomic_write_json, spreadsheet_safe
from kanoclip.data.datasets import DatasetIndex, Sample
from kanoclip.data.datasets.base import sample_image, sample_mask
from kanoclip.data.images import to_png
from kanoclip.errors import DatasetError
from kanoclip.evaluation import metrics, plots
from kanoclip.evaluation.defect_typing import (
    TYPING_CSV,
    class_typing,
    markdown_typing,
    mean_typing,
    per_type_recall,
    typing_csv,
    typing_html,
)
from kanoclip.evaluation.report import config_table, esc, figure, page, random_weights_banner, score_digits, thumbnail
from kanoclip.inference import distributed
from kanoclip.inference.detector import Collected, Detector
from kanoclip.inference.overlays import overlay, with_colour_bar
from kanoclip.labels import Label

COLUMNS = [
    ("image_auroc", "I-AUROC"),
    ("image_ap", "I-AP"),
    ("image_f1_max", "I-F1max"),
    ("pixel_auroc", "P-AUROC"),
    ("pixel_ap", "P-AP"),
    ("pixel_f1_max", "P-F1max"),
    ("aupro", "AUPRO"),
]
DEFECT_COLUMNS = [("image_auroc", "I-AUROC"), ("pixel_auroc", "P-AUROC"), ("aupro", "AUPRO")]
TYPING_COLUMNS = ("accuracy", "balanced_accuracy")  # defect typing's, results.csv's last columns:
TYPING_HEADER = tuple(f"typing_{k}" for k in TYPING_COLUMNS)


@dataclass
class Case:
    """One image shown in the report: a best (or worst) case of its class."""

    image: str  # the path below the dataset's root
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
    defects: list[dict[str, Any]] = field(default_factory=list)  # per defect type: images, DEFECT_COLUMNS
    plots: dict[str, str] = field(default_factory=dict)  # roc, pr, histogram[, seeds][, confusion] -> PNG path
    typing: dict[str, Any] = field(default_factory=dict)  # defect typing: metrics, labels, rows (`defect_typing`)


def class_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None,
    maps: np.ndarray | None,
    aupro_method: str,
    points: int = 0,
) -> tuple[dict[str, float], dict[str, metrics.CurvePoints]]:
    """Every metric of SPEC §6 for one class (pixel metrics need masks) and, with `points`, the image and pixel
    curves for plots, from the same sorts."""
    image, curve = metrics.summarize(labels, scores, points)
    out = dict(zip(("image_auroc", "image_ap", "image_f1_max"), image, strict=True))
    curves = {"image": curve} if curve is not None else {}
    nan = float("nan")
    if masks is None or maps is None:
        return {**out, "pixel_auroc": nan, "pixel_ap": nan, "pixel_f1_max": nan, "aupro": nan}, curves
    pixel, pixel_curve = metrics.summarize(masks, maps, points)
    out.update(zip(("pixel_auroc", "pixel_ap", "pixel_f1_max"), pixel, strict=True))
    out["aupro"] = metrics.aupro(masks, maps, method=aupro_method)
    if pixel_curve is not None:
        curves["pixel"] = pixel_curve
    return out, curves


def defect_metrics(
    defects: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None,
    maps: np.ndarray | None,
    aupro_method: str,
) -> dict[str, dict[str, float]]:
    """Per defect type (MVTec/VisA subfolders): image AUROC of the normal images vs that type's, and pixel AUROC
    and AUPRO over the same images (NaN without masks)."""
    out = {}
    normal = labels == 0
    for defect in sorted(set(defects[labels == 1])):
        subset = normal | (defects == defect)
        row = {"image_auroc": metrics.image_auroc(labels[subset], scores[subset])}
        if masks is None or maps is None:
            row.update(pixel_auroc=float("nan"), aupro=float("nan"))
        else:
            row.update(
                pixel_auroc=metrics.pixel_auroc(masks[subset], maps[subset]),
                aupro=metrics.aupro(masks[subset], maps[subset], method=aupro_method),
            )
        out[str(defect)] = row
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
    """Run the detector over every class of one dataset; write case pictures and plots under `out_dir/assets`.

    With `shots` > 0 (SPEC §9, I21): per class and seed, `shots` normal images drawn from the class's train split
    are the references; metrics are the mean over seeds (`per_seed` keeps each), and the files used are listed.
    Curves and cases are drawn from the first seed."""
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
        defects = np.array([s.defect for s in samples])
        masks = np.stack([sample_mask(s, size) for s in samples]) if pixel_level else None
        per_seed, per_defect, references = [], [], {}
        drawn: tuple[Collected, dict[str, metrics.CurvePoints]] | None = None
        typing: dict[str, Any] = {}
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
            pixel = (None if masks is None else masks[ok], collected.anomaly_maps[ok] if pixel_level else None)
            values, curves = class_metrics(
                labels[ok], collected.pred_scores[ok], *pixel, aupro_method, points=0 if drawn else CURVE_POINTS
            )
            per_seed.append(values)
            per_defect.append(defect_metrics(defects[ok], labels[ok], collected.pred_scores[ok], *pixel, aupro_method))
            if drawn is None:  # typed with the first seed's references, as its maps were made
                typing = class_typing(detector, samples, labels, ok, [_below(s.image, index.root) for s in samples])
            drawn = drawn or (collected, curves)
        if shots:
            detector.clear_references()
        if collected is None or drawn is None:
            continue
        values = {k: float(np.mean([m[k] for m in per_seed])) for k in per_seed[0]}
        first, curves = drawn
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
            defects=_defect_rows(defects[ok], labels[ok], per_defect),
        )
        result.typing = typing
        scores = first.pred_scores
        result.cases = _cases(samples, labels, scores, first.anomaly_maps, out_dir, index.root, cls, cases, detector)
        result.plots = _plots(result, labels[first.ok], scores[first.ok], curves, detector, out_dir)
        results.append(result)
    bar.close()
    return results


CURVE_POINTS = 400  # points per drawn curve


def _defect_rows(defects: np.ndarray, labels: np.ndarray, per_seed: list[dict[str, dict[str, float]]]) -> list:
    """The normal images' row (counts only), then each defect type's row, its metrics the mean over seeds."""
    rows: list[dict[str, Any]] = [
        {"defect": str(d), "images": int(np.sum(defects == d)), **{k: float("nan") for k, _ in DEFECT_COLUMNS}}
        for d in sorted(set(defects[labels == 0]))
    ]
    for defect in per_seed[0]:
        means = {k: float(np.mean([seed[defect][k] for seed in per_seed])) for k, _ in DEFECT_COLUMNS}
        rows.append({"defect": defect, "images": int(np.sum((defects == defect) & (labels == 1))), **means})
    return rows


def _plots(
    result: ClassResult,
    labels: np.ndarray,
    scores: np.ndarray,
    curves: dict[str, metrics.CurvePoints],
    detector: Detector,
    out_dir: Path,
) -> dict[str, str]:
    """ROC and PR curves (image and pixel level), the score histogram with its thresholds, few-shot error bars."""
    title = result.cls  # the section's heading names the dataset
    pngs: dict[str, bytes] = {}
    if curves:
        pngs["roc"] = plots.roc_png(curves, f"ROC: {title}")
        pngs["pr"] = plots.pr_png(curves, f"precision-recall: {title}")
    lines = {
        "F1-max threshold": curves["image"].f1_max_threshold if "image" in curves else None,
        "calibrated threshold": detector.thresholds.image_threshold,
    }
    groups = {Label.GOOD.word: scores[labels == Label.GOOD], Label.DEFECT.word: scores[labels == Label.DEFECT]}
    pngs["histogram"] = plots.histogram_png(groups, lines, f"image scores: {title}")
    if len(result.per_seed) > 1:
        pngs["seeds"] = plots.seeds_png(result.per_seed, COLUMNS, f"{len(result.per_seed)} seeds: {title}")
    if result.typing:
        t = result.typing
        shown = [i for i, row in enumerate(t["confusion"]) if sum(row)]  # the true types, down
        matrix = np.asarray(t["confusion"])[shown]
        pngs["confusion"] = plots.confusion_png(matrix, [t["labels"][i] for i in shown], t["labels"], f"types: {title}")
    out = {}
    for kind, png in pngs.items():
        out[kind] = f"assets/{_slug(result.dataset)}__{_slug(result.cls)}__{kind}.png"
        atomic_write_bytes(out_dir / out[kind], png)
    return out


def _describe_sample(sample: Sample) -> str:
    return str(sample.image) + ("" if sample.crop is None else f" crop {list(sample.crop)}")


def _cases(
    samples: list[Sample],
    labels: np.ndarray,
    scores: np.ndarray,
    maps: np.ndarray,
    out_dir: Path,
    root: Path,
    cls: str,
    count: int,
    detector: Detector,
) -> list[Case]:
    """The `count` most and least correct images (by |label - score|), drawn as image | ground truth | overlay at
    each image's aspect ratio, on the run's colour scale with its colour bar below."""
    valid = np.flatnonzero(~np.isnan(scores))
    if count <= 0 or len(valid) == 0:
        return []
    order = valid[np.argsort(np.abs(labels[valid] - scores[valid]), kind="stable")]
    picks = [(i, "best") for i in order[:count]] + [(i, "worst") for i in order[::-1][:count] if i not in order[:count]]
    scale = detector.overlay_scale
    out = []
    for rank, (i, kind) in enumerate(picks):
        sample = samples[i]
        thumb = thumbnail(sample_image(sample))
        h, w = thumb.shape[:2]
        mask = np.zeros((h, w), dtype=bool)
        if sample.mask is not None:
            mask = np.asarray(Image.fromarray(sample_mask(sample)).resize((w, h), Image.Resampling.NEAREST))
        gt = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
        if sample.mask is None:
            gt[:] = 64  # grey: no mask for this image
        amap = np.asarray(Image.fromarray(maps[i].astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))
        strip = with_colour_bar(np.concatenate([thumb, gt, overlay(thumb, amap, scale, mask=mask)], axis=1), scale)
        name = f"assets/{_slug(root.name)}__{_slug(cls)}__{kind}{rank}.png"
        atomic_write_bytes(out_dir / name, to_png(strip))
        out.append(Case(_below(sample.image, root), int(labels[i]), float(scores[i]), kind, name))
    return out


def _below(path: Path, root: Path) -> str:
    """The path below the dataset's root: `colour/13.jpg` and `good/13.jpg` must not both read `13.jpg`."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


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
    """results.md, results.csv, results.json and report.html, each written atomically. results.csv has a row per
    class (defect "all"), per dataset mean and per defect type."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = markdown_table(results)
    typing = markdown_typing(results)
    typing = f"\nDefect typing (true defects typed among the layout's types), in %:\n\n{typing}" if typing else ""
    atomic_write_bytes(out_dir / "results.md", ("Metrics in %, '—' = undefined.\n\n" + markdown + typing).encode())
    atomic_write_bytes(out_dir / "results.csv", _results_csv(results))
    typed = typing_csv(results)
    if typed is not None:
        atomic_write_bytes(out_dir / TYPING_CSV, typed)
    document = {
        "info": info,
        "classes": [_jsonable(asdict(r)) for r in results],
        "means": {d: _jsonable(mean_row([r for r in results if r.dataset == d])) for d in {r.dataset for r in results}},
    }
    atomic_write_json(out_dir / "results.json", document)
    atomic_write_bytes(out_dir / "report.html", _html(results, info, out_dir).encode())
    return {name: out_dir / name for name in ("results.md", "results.csv", "results.json", "report.html")}


def _results_csv(results: list[ClassResult]) -> bytes:
    """A row per class ("all"), per dataset mean and per defect type; the typing columns last (a defect type's row:
    its recall, the share of its images named right)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["dataset", "class", "defect", "images", *[k for k, _ in COLUMNS], *TYPING_HEADER])
    number = lambda v: "" if v is None or math.isnan(v) else f"{v:.6f}"  # noqa: E731
    typing = {(r.dataset, r.cls): r.typing for r in results}
    for dataset, cls, n, values, _ in table_rows(results):
        t = (
            typing.get((dataset, cls))
            if cls != "mean"
            else mean_typing([r.typing for r in results if r.dataset == dataset])
        )
        typed = [number(t.get(k)) if t else "" for k in TYPING_COLUMNS]
        writer.writerow(
            [*map(spreadsheet_safe, (dataset, cls, "all")), n, *[number(values[k]) for k, _ in COLUMNS], *typed]
        )
    for r in results:
        recall = per_type_recall(r.typing) if r.typing else {}
        for row in r.defects:
            names = map(spreadsheet_safe, (r.dataset, r.cls, row["defect"]))
            typed = [number(recall.get(row["defect"])), ""]
            writer.writerow([*names, row["images"], *[number(row.get(k)) for k, _ in COLUMNS], *typed])
    return buffer.getvalue().encode()


def _jsonable(value: Any) -> Any:
    """NaN is not JSON: undefined metrics become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _html(results: list[ClassResult], info: dict[str, Any], out_dir: Path) -> str:
    """The report: banner, metrics table, then per class its plots, per-defect table and cases; the config last.
    Pictures are inline, so the file alone is the whole report."""
    head = "".join(f"<th>{esc(label)}</th>" for _, label in COLUMNS)
    rows = []
    for dataset, cls, n, values, std in table_rows(results):
        style = ' class="mean"' if cls == "mean" else ""
        cells = "".join(f"<td>{_fmt(values[k])}{_pm(std[k])}</td>" for k, _ in COLUMNS)
        rows.append(f"<tr{style}><td>{esc(dataset)}</td><td>{esc(cls)}</td><td>{n}</td>{cells}</tr>")
    sections = [_class_section(r, out_dir) for r in results]
    scale = info.get("overlay_scale") or {}
    body = f"""<h1>kanoclip evaluation</h1>{random_weights_banner(bool(info.get("random_weights")))}
<p>Metrics in %; "—" = undefined (one label only, or no masks){"; ± = std over seeds" if _seeded(results) else ""}.
Each case: image | ground truth (grey: no mask) | anomaly map overlay (ground truth outlined in white), on the run's
colour scale ({esc(scale.get("mode", "?"))}: blue {_num(scale.get("vmin"))} to red {_num(scale.get("vmax"))},
bar below each strip).</p>
<table><tr><th>dataset</th><th>class</th><th>images</th>{head}</tr>{"".join(rows)}</table>
{"".join(sections)}
<h2>Configuration</h2>{config_table(info)}"""
    return page("kanoclip evaluation", body)


def _class_section(r: ClassResult, out_dir: Path) -> str:
    pictures = "".join(
        figure((out_dir / path).read_bytes(), esc(kind), f"{kind} {r.cls}")
        for kind, path in r.plots.items()
        if kind != "confusion"
    )
    confusion = r.plots.get("confusion")
    heatmap = figure((out_dir / confusion).read_bytes(), "confusion", f"confusion {r.cls}") if confusion else ""
    head = "".join(f"<th>{esc(label)}</th>" for _, label in DEFECT_COLUMNS)
    defects = "".join(
        f"<tr><td>{esc(d['defect'])}</td><td>{d['images']}</td>"
        + "".join(f"<td>{_fmt(d[k])}</td>" for k, _ in DEFECT_COLUMNS)
        + "</tr>"
        for d in r.defects
    )
    digits = score_digits([c.score for c in r.cases])
    cases = "".join(
        figure(
            (out_dir / c.picture).read_bytes(),
            f"{esc(c.kind)}: <b>{esc(c.image)}</b>, label {c.label}, score {c.score:.{digits}f}",
            f"{c.kind} case {c.image}",
        )
        for c in r.cases
    )
    problems = f"<p>unreadable: {esc('; '.join(r.unreadable))}</p>" if r.unreadable else ""
    return (
        f"<section><h2>{esc(r.dataset)} / {esc(r.cls)}</h2>{problems}<div class='plots'>{pictures}</div>"
        f"<h3>Per defect type</h3><table class='defects'><tr><th>defect</th><th>images</th>{head}</tr>{defects}</table>"
        f"<p>Image AUROC: the normal images vs that type's; pixel AUROC and AUPRO over the same images.</p>"
        f"{typing_html(r.typing, heatmap)}"
        f"<h3>Best and worst cases</h3><div class='cases'>{cases}</div></section>"
    )


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


def _pm(std: float) -> str:
    return "" if math.isnan(std) else f" ± {_fmt(std)}"


def _seeded(results: list[ClassResult]) -> bool:
    return any(len(r.per_seed) > 1 for r in results)


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
        write_reports(results, out, {**(info or {}), "overlay_scale": detector.overlay_record()})
    return results
