"""`kanoclip evaluate`: metrics from the detector's own outputs, tables, the HTML report, undefined metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

from kanoclip.data.datasets import load_dataset
from kanoclip.data.datasets.base import sample_mask
from kanoclip.data.datasets.synthetic import generate
from kanoclip.data.images import read_mask
from kanoclip.evaluation.protocol import evaluate
from tests.conftest import randomize_learnable, tiny_detector
from tests.support.reference_metrics import auroc_by_thresholds, auroc_pairwise


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    generate(root, size=64, train=0, good=3, per_defect=2, seed=3)
    return root


def test_per_class_metrics_equal_references_on_the_detectors_outputs(synthetic: Path, tmp_path: Path) -> None:
    detector = tiny_detector()
    randomize_learnable(detector.model)
    index = load_dataset(synthetic)
    results = evaluate(detector, [index], tmp_path, cases=2)
    by_class = {r.cls: r for r in results}
    size = detector.image_size
    for cls, samples in index.by_class().items():
        detector.set_class(cls)  # evaluate gives each class its own training-free text
        assert by_class[cls].text["class"] == cls
        predictions = list(detector.run([s.image for s in samples], own_size=False))
        labels = [s.label for s in samples]
        scores = [p.pred_score for p in predictions]
        assert by_class[cls].metrics["image_auroc"] == pytest.approx(
            auroc_pairwise(np.array(labels), np.array(scores)), abs=1e-6
        )
        masks = np.stack([_mask(s.mask, size) for s in samples])
        maps = np.stack([p.anomaly_map for p in predictions]).astype(np.float16)  # the report stores maps in float16
        want = auroc_by_thresholds(masks.ravel(), maps.astype(np.float64).ravel())
        assert by_class[cls].metrics["pixel_auroc"] == pytest.approx(want, abs=1e-6)
    document = json.loads((tmp_path / "results.json").read_text())
    means = document["means"][synthetic.name]
    assert means["image_auroc"] == pytest.approx(np.mean([r.metrics["image_auroc"] for r in results]), abs=1e-9)
    html = (tmp_path / "report.html").read_text()
    for r in results:
        assert f"{r.dataset} / {r.cls}" in html
        assert len(r.cases) == 4 and all((tmp_path / c.picture).is_file() for c in r.cases)
        assert {c.kind for c in r.cases} == {"best", "worst"}
    assert "| **mean** |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.csv").read_text().splitlines()[0].startswith("dataset,class,defect,images,image_auroc")


def _mask(path: Path | None, size: int) -> np.ndarray:
    """AnomalyCLIP's mask pipeline itself (SPEC §3.1): torchvision Resize (bilinear) on the PIL mask, ToTensor,
    then > 0.5."""
    if path is None:
        return np.zeros((size, size), dtype=bool)
    pil = Image.fromarray(read_mask(path).astype(np.uint8) * 255)
    tensor = transforms.ToTensor()(transforms.Resize((size, size))(pil))
    return (tensor[0] > 0.5).numpy()


@pytest.mark.parametrize("size", [112, 518])
def test_masks_are_resized_as_the_reference_pipeline_does_on_real_masks(shared_data: Path, size: int) -> None:
    index = load_dataset(shared_data / "MVTec_derived_hazelnut_toy")
    masked = [s for s in index.test if s.mask is not None]
    assert len(masked) == 17
    for sample in masked:
        ours = sample_mask(sample, size)
        assert np.array_equal(ours, _mask(sample.mask, size)), sample.mask
    nearest = np.asarray(Image.fromarray(read_mask(masked[0].mask)).resize((size, size), Image.Resampling.NEAREST))
    assert any(not np.array_equal(sample_mask(s, size), nearest) for s in masked[:1])  # not the old nearest resize
