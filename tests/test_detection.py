"""Detector and `kanoclip detect`: the fast path equals the plain model, every input kind, bad files, outputs."""

from __future__ import annotations

import csv
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kanoclip
from kanoclip.cli import main
from kanoclip.data.images import read_image
from kanoclip.data.inputs import expand_inputs
from kanoclip.errors import ImageReadError
from kanoclip.inference.detector import Detector
from kanoclip.inference.overlays import bar_height

from .conftest import randomize_learnable, tiny_detector

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]


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


@pytest.mark.slow
def test_decoding_workers_die_with_a_detect_killed_by_sigkill(tmp_path: Path) -> None:
    """A SIGKILLed `detect` once left its DataLoader workers running (1.2 GB each): a worker blocked on sending a
    large decoded image to a parent that no longer reads never returns to torch's own parent check."""
    folder = tmp_path / "in"
    folder.mkdir()
    ramp = np.broadcast_to(np.arange(1600, dtype=np.uint16)[None, :, None] % 256, (1600, 1600, 3)).astype(np.uint8)
    for i in range(40):
        Image.fromarray(np.roll(ramp, i, axis=1)).save(folder / f"{i:03d}.png", compress_level=1)
    flags = [f for f in TINY_FLAGS if f not in ("--workers", "0")]
    out = tmp_path / "out"
    script = "import sys; from kanoclip.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", script, "detect", str(folder), "--out", str(out), *flags, "--workers", "2"]
    command += ["--batch-size", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        partial = out / "scores.csv.partial"
        wait_until(lambda: partial.is_file() and partial.read_text().count("\n") > 3, 120, "detect to score images")
        workers = children_of(proc.pid)
        assert len(workers) == 2, workers
    finally:
        proc.kill()
        proc.wait()
    wait_until(lambda: not any(alive(pid) for pid in workers), 30, "the workers to exit")


def children_of(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its (dead) parent to be reaped by init."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Event-based wait: poll the condition, fail with a message if it does not come within the bound."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


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
