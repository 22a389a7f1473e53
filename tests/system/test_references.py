"""Few-shot normal references (SPEC §9): nearest-neighbour maps, coreset, bank files, and the zero-shot path kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kanoclip import KAnoCLIPConfig
from kanoclip.data.datasets import Sample, load_dataset
from kanoclip.data.datasets.base import sample_image, sample_mask
from kanoclip.evaluation import metrics
from kanoclip.inference.detector import Detector
from tests.conftest import tiny_detector


def pixel_auroc_with(det: Detector, test: list[Sample], references: list[np.ndarray]) -> float:
    masks = np.stack([sample_mask(s, det.image_size) for s in test])
    det.clear_references()
    if references:
        det.add_references(references)
    collected = det.collect([(s.image, s.crop) for s in test])
    return metrics.curve_metrics(masks, collected.anomaly_maps)[0]


@pytest.mark.slow
def test_one_good_part_localises_real_defects_even_on_random_vit_b_16(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pipeline check, not the method's quality: random ViT-B-16 weights at 224. Nearest-neighbour maps need no
    alignment to text, so they find real defects even on random features; zero-shot maps on them cannot."""
    config = KAnoCLIPConfig(backbone="ViT-B-16", pretrained="none", image_size=224)
    det = tiny_detector(config, workers=2)
    found = {}
    hazel = load_dataset(shared_data / "MVTec_derived_hazelnut_toy")
    assert len(hazel.train) == 28 and sum(s.mask is not None for s in hazel.test) == 17
    kolektor = load_dataset(shared_data / "KolektorSDD", "kolektor-thirds")  # SPEC I19: the protocol's cut
    for name, index, floor in (("hazelnut", hazel, 0.95), ("KolektorSDD", kolektor, 0.80)):
        det.set_class(index.classes[0])
        # the zero-shot maps beside it are benchmarks/fewshot.py's (pipeline_check): half this test's time
        found[name] = one = pixel_auroc_with(det, index.test, [sample_image(index.train[0])])
        assert one >= floor, (name, one)
    with capsys.disabled():
        print("\npixel AUROC, random ViT-B-16 @224, 1 reference:", found)
