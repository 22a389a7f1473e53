"""Defect typing (issue #34): how often bottle's anomalous images (MVTec AD, ../shared/data: 3 types x 5 images) are
named their true type, zero-shot (CLIP text of the shipped types) and 1-shot (one example per type, the other 12
typed; every draw of one example per type, 5^3 = 125, so no draw is chosen by hand), with the examples' weight at its
default (0.5) and at 1 (examples alone); and what typing costs beside a detection.

Random weights (no pretrained CLIP can be downloaded here): the numbers measure the pipeline, not the method. The
figure to beat once real weights are in: MMAD (Jiang et al., ICLR 2025), GPT-4o with one example names MVTec AD's
defect types 77.1% of the time (its "Defect Classification", DS-MVTec, 1-shot: 77.095% in the authors'
`all_result/answers_1_shot_gpt-4o_accuracy.csv`, a multiple-choice question over each image's candidate types).

    python -m benchmarks.defect_typing [--quick] [--no-append]      (--quick: kanoclip-tiny only)
"""

from __future__ import annotations

import itertools
import statistics
import warnings
from pathlib import Path

import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from benchmarks.common import standalone, timed
from kanoclip import KAnoCLIPConfig
from kanoclip.inference.config import RunConfig
from kanoclip.inference.defect_typing import DefectExample
from kanoclip.inference.detector import Detector
from kanoclip.model.defect_typing import TypePrototypes

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "MVTec_AD" / "bottle" / "test"
TYPES = ("broken_large", "broken_small", "contamination")
CHANCE = 1 / len(TYPES)
REPEATS = 5  # timing repeats


def detector(backbone: str, size: int, device: torch.device, **run: object) -> Detector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = KAnoCLIPConfig(backbone=backbone, pretrained="none", image_size=size)
        fields = {"device": str(device), "workers": 0, "batch_size": 8, "class_name": "bottle", **run}
        return Detector.from_config(RunConfig.with_model(config, **fields))


def images() -> dict[str, list[Path]]:
    found = {kind: sorted((DATA / kind).glob("*.png")) for kind in TYPES}
    assert all(len(v) == 5 for v in found.values()), "the shared subset holds 5 images per type"
    return found


def scored(true: list[str], predicted: list[str]) -> tuple[float, float]:
    return accuracy_score(true, predicted), balanced_accuracy_score(true, predicted)


def one_shot(det: Detector, by_type: dict[str, list[Path]], weight: float) -> list[tuple[float, float]]:
    """Every draw of one example per type; the other 12 images typed with the draw's examples. Each image's region
    is computed once (as an example, weighed by its map: exactly what typing computes for it) and the draws reuse
    them; the first draw is checked against `type_defects` run from the images."""
    assert det.typer is not None
    det.typer.weight = weight
    anomalous = [(kind, p) for kind in TYPES for p in by_type[kind]]
    det.use_defect_examples(None)
    every = det.encode_defect_examples([DefectExample(p, kind) for kind, p in anomalous])  # (15, L, D)
    levels = det.map_levels()
    out = []
    for n, picks in enumerate(itertools.product(range(5), repeat=len(TYPES))):
        chosen = [5 * t + k for t, k in enumerate(picks)]
        rest = [i for i in range(len(anomalous)) if i not in chosen]
        examples = TypePrototypes(every.features[chosen], tuple(every.examples[i] for i in chosen), every.identity)
        det.use_defect_examples(examples)
        typed = det.typer.classify(det.model, "bottle", every.features[rest], levels)
        if n == 0:  # the shortcut is the pipeline
            again = det.type_defects([anomalous[i][1] for i in rest])
            assert [t.type for t in again] == [t.type for t in typed], "precomputed regions differ from typing's"
        out.append(scored([anomalous[i][0] for i in rest], [t.type for t in typed]))
    det.use_defect_examples(None)
    return out


def cost(det: Detector, off: Detector, by_type: dict[str, list[Path]], device: torch.device) -> tuple[float, float]:
    """Seconds for one batch of 8 anomalous images through `predict_many`, every one judged anomalous and typed, and
    the same with typing off (medians of `REPEATS` interleaved repeats, after a warm-up)."""
    batch = [p for kind in TYPES for p in by_type[kind]][:8]
    with_typing, without = [], []
    det.predict_many(batch), off.predict_many(batch)
    for _ in range(REPEATS):
        with_typing.append(timed(lambda: det.predict_many(batch), device))
        without.append(timed(lambda: off.predict_many(batch), device))
    return statistics.median(with_typing), statistics.median(without)


def rows_for(backbone: str, size: int, device: torch.device) -> list[str]:
    by_type = images()
    det = detector(backbone, size, device, image_threshold=0.0)  # every score >= 0: every image judged anomalous
    anomalous = [(kind, p) for kind in TYPES for p in by_type[kind]]
    zero = scored([k for k, _ in anomalous], [t.type for t in det.type_defects([p for _, p in anomalous])])
    rows = [f"| {backbone} | {size} | zero-shot (text) | 15 | 1 | {100 * zero[0]:.1f} | {100 * zero[1]:.1f} |"]
    for weight in (0.5, 1.0):
        draws = one_shot(det, by_type, weight)
        acc, bal = ([100 * d[i] for d in draws] for i in (0, 1))
        rows.append(
            f"| {backbone} | {size} | 1-shot, w = {weight:g} | 12 | {len(draws)} | "
            f"{statistics.mean(acc):.1f} ± {statistics.pstdev(acc):.1f} | "
            f"{statistics.mean(bal):.1f} ± {statistics.pstdev(bal):.1f} |"
        )
    off = Detector.from_config(det.run_config.replace(defect_typing=False), backend=det.backend)
    typed, plain = cost(det, off, by_type, device)
    rows.append(
        f"| {backbone} | {size} | cost: 8 images judged anomalous, typed / not | 8 | {REPEATS} | "
        f"{typed:.3f} s / {plain:.3f} s | ratio {typed / plain:.2f} |"
    )
    for row in rows:
        print(row, flush=True)
    return rows


def run(quick: bool, device: torch.device) -> str:
    cases = [("kanoclip-tiny", 112)] + ([] if quick else [("ViT-B-16", 224)])
    head = [
        "| backbone | size | setting | images typed | draws | accuracy % | balanced accuracy % |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [row for backbone, size in cases for row in rows_for(backbone, size, device)]
    return (
        "MVTec AD bottle (../shared/data: 3 types x 5 images, downscaled to 256 px, no masks: examples are weighed "
        "by their anomaly maps). RANDOM weights: these numbers measure the pipeline, not the method; chance is "
        f"{100 * CHANCE:.1f}%. 1-shot: mean ± std over every draw of one example per type. The figure to beat once "
        "real weights are in: MMAD (ICLR 2025), GPT-4o with one example, 77.1% on MVTec AD's defect types "
        "(multiple choice; jam-cc/MMAD all_result/answers_1_shot_gpt-4o_accuracy.csv, Defect Classification, "
        "DS-MVTec). The cost row: `predict_many` of 8 images with every image judged anomalous, with and without "
        "typing (one more CLIP-VV pass per typed image).\n\n" + "\n".join(head + rows)
    )


if __name__ == "__main__":
    standalone(__doc__, "Defect typing on MVTec AD bottle's 3 types (issue #34)", run)
