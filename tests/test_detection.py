"""Detector and `kanoclip detect`: the fast path equals the plain model, every input kind, bad files, outputs."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kanoclip
from kanoclip.cli import main
from kanoclip.detection import Detector, expand_inputs
from kanoclip.errors import ImageReadError
from kanoclip.images import read_image

from .conftest import TINY, randomize_learnable

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]


@pytest.fixture(scope="module")
def detector() -> Detector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = Detector(config=TINY, device="cpu", workers=0, batch_size=3)
    randomize_learnable(d.model)
    d.model._knowledge_text = None  # exercise Bi-CMCI and the adapter with learned prompts, not only knowledge text
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
        assert prediction.map is not None and prediction.map.shape == rgb.shape[:2]
        assert prediction.score == pytest.approx(float(plain.scores[0]), abs=1e-4)
        assert np.abs(prediction.map - plain.maps[0].numpy()).max() < 1e-4
    score, amap = detector.predict(files[0])
    assert score == pytest.approx(fast[0].score, abs=1e-6) and np.allclose(amap, fast[0].map, atol=1e-6)


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


def test_detect_writes_a_score_and_a_map_of_its_own_size_for_every_shared_image(
    shared_data: Path, tmp_path: Path
) -> None:
    inputs = [shared_data / "MVTec_AD", shared_data / "KolektorSDD"]
    assert main(["detect", *map(str, inputs), "--out", str(tmp_path), *TINY_FLAGS, "--batch-size", "16"]) == 0
    rows = list(csv.DictReader((tmp_path / "scores.csv").read_text().splitlines()))
    images, _ = expand_inputs(inputs)
    assert len(rows) == len(images) == 30 + 147  # every image, no ground-truth mask taken for an image
    assert {Path(r["path"]).resolve() for r in rows} == {p.resolve() for p in images}
    for row in rows[:: max(1, len(rows) // 12)]:
        assert 0.0 <= float(row["score"]) <= 1.0
        name = "__".join(Path(row["path"]).resolve().relative_to(shared_data.resolve()).with_suffix("").parts)
        amap = np.load(tmp_path / "maps" / f"{name}.npy")
        width, height = size_of(row["path"])
        assert amap.shape == (height, width)
        assert size_of(tmp_path / "maps" / f"{name}.png") == (width, height)
    assert not (tmp_path / "scores.csv.partial").exists()


def size_of(path: str | Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_detect_reads_every_image_kind_and_reports_bad_files_without_stopping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 65535, (40, 50), dtype=np.uint16)).save(folder / "deep16.png")
    Image.fromarray(rng.integers(0, 255, (40, 50, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "notes.jpg").write_text("not an image")
    out = tmp_path / "out"
    code = main(["detect", str(folder), "--out", str(out), "--threshold", "0.5", *TINY_FLAGS])
    assert code == 1  # some files failed, the others were scored
    rows = {Path(r["path"]).name: r for r in csv.DictReader((out / "scores.csv").read_text().splitlines())}
    assert set(rows) == {"rgb.png", "gray.png", "deep16.png", "alpha.png"}
    assert all(r["label"] == str(int(float(r["score"]) >= 0.5)) for r in rows.values())
    for name in rows:
        assert np.load(out / "maps" / f"{Path(name).stem}.npy").shape == (40, 50)
    err = capsys.readouterr().err
    assert "corrupt.png" in err and "notes.jpg" in err


def test_missing_inputs_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ImageReadError, match="no such file or folder"):
        expand_inputs([tmp_path / "nope"])
    with pytest.raises(ImageReadError, match=r"pattern matches no image|no image files"):
        expand_inputs([str(tmp_path / "*.png")])
    assert main(["detect", str(tmp_path / "missing.png"), *TINY_FLAGS]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err
