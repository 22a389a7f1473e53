"""Detector and `kanoclip detect`: the fast path equals the plain model, every input kind, bad files, outputs."""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kanoclip.cli import main
from kanoclip.data.inputs import expand_inputs
from kanoclip.errors import ImageReadError
from kanoclip.inference.overlays import bar_height

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]


def test_detect_writes_a_score_and_a_map_of_its_own_size_for_every_shared_image(
    shared_data: Path, tmp_path: Path
) -> None:
    inputs = [shared_data / "MVTec_AD", shared_data / "KolektorSDD"]
    assert main(["detect", *map(str, inputs), "--out", str(tmp_path), *TINY_FLAGS, "--batch-size", "16"]) == 0
    rows = list(csv.DictReader((tmp_path / "scores.csv").read_text().splitlines()))
    images, _ = expand_inputs(inputs)
    assert len(rows) == len(images) == 30 + 147  # every image, no ground-truth mask taken for an image
    assert {Path(r["path"]).resolve() for r in rows} == {p.resolve() for p in images}
    assert len({r["map"] for r in rows}) == len(rows)  # every image its own map file
    for row in rows[:: max(1, len(rows) // 12)]:
        assert 0.0 <= float(row["score"]) <= 1.0
        assert (
            row["map"] == "maps/" + Path(row["path"]).resolve().relative_to(shared_data.resolve()).as_posix() + ".npy"
        )
        amap = np.load(tmp_path / row["map"])
        width, height = size_of(row["path"])
        assert amap.shape == (height, width)
        overlay = size_of(tmp_path / row["map"].replace(".npy", ".overlay.png"))
        assert overlay == (width, height + bar_height(width))  # the image, with the colour bar below
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
    for name, row in rows.items():
        assert row["map"] == f"maps/{name}.npy" and np.load(out / row["map"]).shape == (40, 50)
    err = capsys.readouterr().err
    assert "corrupt.png" in err and "notes.jpg" in err


def test_missing_inputs_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ImageReadError, match="no such file or folder"):
        expand_inputs([tmp_path / "nope"])
    with pytest.raises(ImageReadError, match=r"pattern matches no image|no image files"):
        expand_inputs([str(tmp_path / "*.png")])
    assert main(["detect", str(tmp_path / "missing.png"), *TINY_FLAGS]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err


def test_images_that_share_a_stem_or_a_flattened_name_each_keep_their_own_map(tmp_path: Path) -> None:
    """x.jpg / x.png and a/y.png / a__y.png once overwrote each other's maps."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "in"
    (folder / "a").mkdir(parents=True)
    pictures = {
        "x.jpg": rng.integers(0, 255, (30, 40, 3), dtype=np.uint8),
        "x.png": rng.integers(0, 255, (34, 44, 3), dtype=np.uint8),
        "a/y.png": rng.integers(0, 255, (36, 46, 3), dtype=np.uint8),
        "a__y.png": rng.integers(0, 255, (38, 48, 3), dtype=np.uint8),
    }
    for name, rgb in pictures.items():
        Image.fromarray(rgb).save(folder / name, quality=95)
    out = tmp_path / "out"
    assert main(["detect", str(folder), "--out", str(out), *TINY_FLAGS]) == 0
    rows = list(csv.DictReader((out / "scores.csv").read_text().splitlines()))
    assert len(rows) == 4 and len({r["map"] for r in rows}) == 4
    for row in rows:
        name = Path(row["path"]).relative_to(folder).as_posix()
        height, width = pictures[name].shape[:2]
        assert np.load(out / row["map"]).shape == (height, width)  # the map is this image's, not a namesake's
    assert len(list((out / "maps").rglob("*.npy"))) == 4


def test_outputs_follow_the_umask(shared_data: Path, tmp_path: Path) -> None:
    """Atomic writes went through mkstemp, so run.json, scores, maps, calibration files and banks were 0600."""
    image = shared_data / "MVTec_AD/bottle/test/good/000.png"
    previous = os.umask(0o022)
    try:
        assert main(["detect", str(image), "--out", str(tmp_path / "out"), *TINY_FLAGS]) == 0
        assert main(["calibrate", str(image), "--out", str(tmp_path / "cal.json"), *TINY_FLAGS]) == 0
        assert main(["reference", "build", str(image), "--out", str(tmp_path / "b.kref"), *TINY_FLAGS]) == 0
    finally:
        os.umask(previous)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 6 and {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {"0o644"}


def test_a_missing_input_or_reference_fails_before_the_model_is_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the default model the user once saw a download error, 17-19 s later, instead of the missing path."""
    assert main(["detect", str(tmp_path / "missing.png"), "--backbone", "no-such-backbone"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["detect", str(image), "--reference", str(tmp_path / "gone"), "--backbone", "no-such-backbone"]) == 2
    assert "gone: no such file or folder" in capsys.readouterr().err
