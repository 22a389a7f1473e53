"""Defect typing in `evaluate` (issue #34): how often the detector names a defect's type right.

Where a class's layout names at least two defect types (MVTec AD's `test/<type>/`, VisA, MPDD; a single `defect`
or `ko` folder names none), every readable anomalous image is typed (`Detector.type_defects`) among the layout's
types, or `--defect-types` when given, whatever its score: typing is measured on the true defects, apart from
detection. Each region is weighted by its map computed again in float32, as `detect` weighs it (the evaluation
keeps float16 maps, too coarse for nearly flat maps), with the first seed's references under --shots.

Per class: accuracy (the share of images named right), balanced accuracy (the mean over the true types of each
type's recall, scikit-learn's `balanced_accuracy_score`) and the confusion matrix (rows: true type, columns:
predicted, in `labels` order; `unknown` is a column when predicted). Functional forms take arrays, as
`evaluation.metrics` does; `typing.csv` lists every image's prediction.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kanoclip._files import spreadsheet_safe
from kanoclip.data.datasets import Sample
from kanoclip.data.datasets.base import sample_image
from kanoclip.evaluation.report import esc
from kanoclip.inference.detector import Detector

TYPING_CSV = "typing.csv"
MIN_TYPES = 2  # a layout with one defect folder names no type to tell apart


def confusion(true: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> NDArray[np.int64]:
    """Counts (len(labels), len(labels)): row i, column j = images of true type labels[i] named labels[j]."""
    index = {name: i for i, name in enumerate(labels)}
    out = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(true, predicted, strict=True):
        out[index[t], index[p]] += 1
    return out


def typing_metrics(true: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean recall over the types that have true images) and the confusion matrix."""
    matrix = confusion(true, predicted, labels)
    support = matrix.sum(axis=1)
    recall = np.diag(matrix)[support > 0] / support[support > 0]
    nan = float("nan")
    return {
        "accuracy": float(np.trace(matrix) / matrix.sum()) if matrix.sum() else nan,
        "balanced_accuracy": float(recall.mean()) if len(recall) else nan,
        "confusion": matrix.tolist(),
    }


def class_typing(
    detector: Detector, samples: list[Sample], labels: NDArray[Any], ok: NDArray[np.bool_], names: list[str]
) -> dict[str, Any]:
    """One class's typing: its metrics, its labels and every typed image (`ok`: readable; `names`: each sample as
    reports name it). Empty when typing is off or the layout names fewer than `MIN_TYPES` types."""
    typer = detector.typer
    picks = [i for i, s in enumerate(samples) if labels[i] == 1 and ok[i] and s.defect]
    layout = sorted({samples[i].defect for i in picks})
    if typer is None or len(layout) < MIN_TYPES:
        return {}
    listed = None if typer.listed else layout
    typed = []
    for start in range(0, len(picks), detector.batch_size):  # decoded a batch at a time: memory stays one batch
        batch = picks[start : start + detector.batch_size]
        typed += detector.type_defects([sample_image(samples[i]) for i in batch], None, listed)
    true, predicted = [samples[i].defect for i in picks], [t.type for t in typed]
    types = typer.types_for(detector.type_class, listed)
    label_order = list(dict.fromkeys([*types, *true, *predicted]))
    rows = [
        {"image": names[i], "true": t, "predicted": k.type, "p": k.p}
        for i, t, k in zip(picks, true, typed, strict=True)
    ]
    return {"labels": label_order, "images": len(picks), **typing_metrics(true, predicted, label_order), "rows": rows}


def per_type_recall(typing: dict[str, Any]) -> dict[str, float]:
    """Each true type's recall (the share of its images named right), from the confusion matrix."""
    matrix = np.asarray(typing["confusion"])
    return {
        name: float(matrix[i, i] / matrix[i].sum()) for i, name in enumerate(typing["labels"]) if matrix[i].sum() > 0
    }


def _pct(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def mean_typing(typings: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The mean over classes of accuracy and balanced accuracy (NaN when no class was typed)."""
    out = {}
    for key in ("accuracy", "balanced_accuracy"):
        values = [t[key] for t in typings if t and not math.isnan(t[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def markdown_typing(results: Sequence[Any]) -> str:
    """The typing table of results.md: per typed class, then each dataset's mean over them ("" when none)."""
    typed = [r for r in results if r.typing]
    if not typed:
        return ""
    lines = [
        "| dataset | class | images | types | typing accuracy | balanced accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for dataset in dict.fromkeys(r.dataset for r in typed):
        group = [r for r in typed if r.dataset == dataset]
        for r in group:
            t = r.typing
            types = ", ".join(t["labels"])
            lines.append(
                f"| {dataset} | {r.cls} | {t['images']} | {types} | {_pct(t['accuracy'])} | "
                f"{_pct(t['balanced_accuracy'])} |"
            )
        mean = mean_typing([r.typing for r in group])
        lines.append(
            f"| {dataset} | **mean** | {sum(r.typing['images'] for r in group)} | | **{_pct(mean['accuracy'])}** | "
            f"**{_pct(mean['balanced_accuracy'])}** |"
        )
    return "\n".join(lines) + "\n"


def typing_csv(results: Sequence[Any]) -> bytes | None:
    """typing.csv: one row per typed image (dataset, class, image, true_type, defect_type, defect_type_p); names a
    folder or a client chose are quoted if a spreadsheet would run them."""
    typed = [r for r in results if r.typing]
    if not typed:
        return None
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["dataset", "class", "image", "true_type", "defect_type", "defect_type_p"])
    for r in typed:
        for row in r.typing["rows"]:
            names = (r.dataset, r.cls, row["image"], row["true"], row["predicted"])
            writer.writerow([*map(spreadsheet_safe, names), f"{row['p']:.6f}"])
    return buffer.getvalue().encode()


def typing_html(typing: dict[str, Any], picture: str) -> str:
    """The class section's typing part: the numbers, what they mean, and the heatmap (`picture`, already HTML)."""
    if not typing:
        return ""
    recall = ", ".join(f"{esc(k)} {_pct(v)}" for k, v in per_type_recall(typing).items())
    return (
        f"<h3>Defect typing</h3><p>{typing['images']} anomalous images typed among {esc(', '.join(typing['labels']))}:"
        f" accuracy {_pct(typing['accuracy'])}%, balanced accuracy {_pct(typing['balanced_accuracy'])}% (the mean "
        f"of each true type's recall: {recall}).</p>{picture}"
    )
