"""Detector and `kanoclip detect`: the fast path equals the plain model, every input kind, bad files, outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kanoclip
from kanoclip.data.images import read_image
from kanoclip.inference.detector import Detector
from tests.conftest import randomize_learnable, tiny_detector


@pytest.fixture(scope="module")
def detector() -> Detector:
    d = tiny_detector(batch_size=3)
    randomize_learnable(d.model)
    d.model.setup(text=None)  # exercise Bi-CMCI and the adapter with learned prompts, not only knowledge text
    return d


def test_the_fast_path_equals_the_plain_model_forward(detector: Detector, shared_data: Path) -> None:
    """Decoding + resizing in workers, batching, inference mode and map resizing change nothing (fp32, 1e-4)."""
    files = sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("*.jpg"))[:4]
    files += sorted((shared_data / "KolektorSDD" / "kos01").glob("Part*.jpg"))[:2]  # another size and grayscale
    fast = list(detector.run(files))
    for path, prediction in zip(files, fast, strict=True):
        rgb = read_image(path)
        images = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            plain = detector.model(images)
        assert prediction.anomaly_map is not None and prediction.anomaly_map.shape == rgb.shape[:2]
        assert prediction.pred_score == pytest.approx(float(plain.pred_score[0]), abs=1e-4)
        assert np.abs(prediction.anomaly_map - plain.anomaly_map[0].numpy()).max() < 1e-4
    score, amap = detector.predict(files[0])
    assert score == pytest.approx(fast[0].pred_score, abs=1e-6) and np.allclose(amap, fast[0].anomaly_map, atol=1e-6)


def test_predict_takes_arrays_pil_images_paths_and_bytes(detector: Detector, tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    results = [
        detector.predict(rgb),
        detector.predict(Image.fromarray(rgb)),
        detector.predict(tmp_path / "a.png"),
        detector.predict((tmp_path / "a.png").read_bytes()),
    ]
    for score, amap in results:
        assert amap.shape == (60, 90) and amap.dtype == np.float32
        assert score == pytest.approx(results[0][0], abs=1e-6)
    assert kanoclip.Detector is Detector


def test_bf16_autocast_on_the_cpu_agrees_with_fp32(shared_data: Path) -> None:
    files = sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("*.jpg"))[:4]
    fp32, bf16 = tiny_detector(precision="fp32"), tiny_detector(precision="bf16")
    assert fp32.backend.dtype is None and bf16.backend.dtype == torch.bfloat16  # type: ignore[attr-defined]
    a, b = list(fp32.run(files)), list(bf16.run(files))
    for p, q in zip(a, b, strict=True):
        assert p.pred_score is not None and q.pred_score is not None
        assert p.anomaly_map is not None and q.anomaly_map is not None
        assert abs(p.pred_score - q.pred_score) < 0.02
        assert np.abs(p.anomaly_map - q.anomaly_map).max() < 0.05
        assert not np.array_equal(p.anomaly_map, q.anomaly_map)  # bf16 really ran
