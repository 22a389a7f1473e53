"""Few-shot references (issue #13): inference with a bank of k good parts over zero-shot inference, bank memory and
build time per k, and the pipeline check on real masks (random ViT-B-16: it measures the pipeline, not the method).

Timings are interleaved (zero-shot, k=1, k=4, k=16, zero-shot, ...) and compared by medians. Goal: <= 1.15 at k = 4
on ViT-L@518 (where it runs on a GPU, fp16 banks); ViT-B@224 and ViT-L@518 at batch 1 on a CPU.

    python -m benchmarks.fewshot [--quick] [--no-append]
"""

from __future__ import annotations

import statistics
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import standalone, timed
from kanoclip import KAnoCLIPConfig
from kanoclip.data.datasets import load_dataset
from kanoclip.data.datasets.base import sample_image, sample_mask
from kanoclip.evaluation import metrics
from kanoclip.inference.config import RunConfig
from kanoclip.inference.detector import Detector
from kanoclip.model.references import ReferenceBank

SHOTS = (1, 4, 16)
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def detector(backbone: str, size: int, device: torch.device, batch: int = 8) -> Detector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = KAnoCLIPConfig(backbone=backbone, pretrained="none", image_size=size)
        run = RunConfig.with_model(config, device=str(device), workers=2, batch_size=batch, precision="auto")
        return Detector.from_config(run)


def speed(backbone: str, size: int, batch: int, repeats: int, device: torch.device) -> list[str]:
    det = detector(backbone, size, device, batch)
    rng = np.random.default_rng(0)
    good = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(max(SHOTS))]
    images = torch.rand(batch, 3, size, size)
    banks: dict[int, ReferenceBank | None] = {0: None}
    build: dict[int, float] = {}
    for k in SHOTS:
        det.clear_references()
        build[k] = timed(lambda k=k: det.add_references(good[:k]), device)
        banks[k] = det.references
    times: dict[int, list[float]] = {k: [] for k in banks}
    for bank in banks.values():  # warm-up
        det.use_references(bank)
        det.forward(images)
    for _ in range(repeats):
        for k, bank in banks.items():
            det.use_references(bank)
            times[k].append(timed(lambda: det.forward(images), device))
    zero = statistics.median(times[0])
    rows = []
    for k in SHOTS:
        bank = banks[k]
        assert bank is not None
        t = statistics.median(times[k])
        rows.append(
            f"| {backbone} | {size} | {batch} | {k} | {zero:.3f} | {t:.3f} | {t / zero:.3f} | "
            f"{bank.levels[0].shape[0]} | {bank.nbytes() / 2**20:.1f} | {build[k]:.2f} |"
        )
        print(rows[-1], flush=True)
    return rows


def pipeline_check(device: torch.device) -> str:
    det = detector("ViT-B-16", 224, device)
    rows = ["| data | images (masks) | k | pixel AUROC | image AUROC |", "|---|---|---|---|---|"]
    for name, index in (
        ("hazelnut (MVTec-derived)", load_dataset(DATA / "MVTec_derived_hazelnut_toy")),
        ("KolektorSDD, thirds (SPEC I19)", load_dataset(DATA / "KolektorSDD", "kolektor-thirds")),
    ):
        det.set_class(index.classes[0])
        test = index.test
        masks = np.stack([sample_mask(s, 224) for s in test])
        labels = np.array([s.label for s in test])
        for k in (0, 1, 4):
            det.clear_references()
            if k:
                picks = np.random.default_rng(0).choice(len(index.train), k, replace=False)
                det.add_references([sample_image(index.train[i]) for i in picks])
            c = det.collect([(s.image, s.crop) for s in test])
            pixel = metrics.curve_metrics(masks, c.anomaly_maps)[0]
            image = metrics.curve_metrics(labels, c.pred_scores)[0]
            rows.append(
                f"| {name} | {len(test)} ({int(masks.any(axis=(1, 2)).sum())}) | {k} | {pixel:.3f} | {image:.3f} |"
            )
            print(rows[-1], flush=True)
    return "\n".join(rows)


def run(quick: bool, device: torch.device) -> str:
    cases = [("ViT-B-16", 224, 1), ("ViT-B-16", 224, 8)]
    if not quick:
        cases.append(("ViT-L-14-336", 518, 1))
    head = [
        "| backbone | size | batch | k | zero-shot (s) | few-shot (s) | ratio | patches / level | bank MiB "
        "| build (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [row for backbone, size, batch in cases for row in speed(backbone, size, batch, 3 if quick else 5, device)]
    return (
        "Medians of interleaved repeats; training-free mode (the deep taps are searched); banks fp32 on a CPU, fp16 "
        "on a GPU.\n\n" + "\n".join(head + rows) + "\n\nPipeline check on real masks, RANDOM ViT-B-16 weights at 224 "
        "(it measures the pipeline, not the method): references drawn from each set's train split, seed 0.\n\n"
        + pipeline_check(device)
    )


if __name__ == "__main__":
    standalone(__doc__, "Few-shot references: cost, memory and the pipeline check (issue #13)", run)
