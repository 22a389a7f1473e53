"""Calibration: false-alarm thresholds hold on held-out normals, F1-max equals brute force, stored where used."""

from __future__ import annotations

import csv
import json
import shutil
import tracemalloc
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest

from kanoclip.cli import main
from kanoclip.evaluation.calibration import f1_max_threshold, false_alarm_threshold
from kanoclip.model import checkpoint

from .conftest import tiny_model

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]


def test_a_one_percent_false_alarm_threshold_gives_one_percent_on_held_out_normals() -> None:
    rng = np.random.default_rng(0)
    for trial in range(5):
        calibration, held_out = rng.normal(size=5000), rng.normal(size=200_000)
        t = false_alarm_threshold(calibration, 0.01)
        assert (calibration >= t.value).sum() == 50  # exactly the allowed share on the calibration set
        # the realised rate on new normals: within sampling error of the 5000-image quantile (sd ~0.0014)
        assert abs((held_out >= t.value).mean() - 0.01) < 0.006, trial
        assert t.warning is None and t.images == 5000


def test_false_alarm_threshold_moves_above_ties_and_warns_when_images_are_too_few() -> None:
    scores = np.array([0.1] * 50 + [0.9] * 3)
    t = false_alarm_threshold(scores, 0.05)  # 2 false alarms allowed, 3 tied at the top: none may be flagged
    assert (scores >= t.value).sum() == 0
    assert "use at least 200 images" in (t.warning or "")


def brute_force_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    best = 0.0
    for threshold in np.unique(scores):
        flagged = scores >= threshold
        tp = (flagged & labels).sum()
        if tp:
            precision, recall = tp / flagged.sum(), tp / labels.sum()
            best = max(best, 2 * precision * recall / (precision + recall))
    return float(best)


def test_f1_max_threshold_equals_a_brute_force_search() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = rng.random(300) < 0.3
        scores = np.round(rng.normal(labels * 1.2, 1.0), 2)  # rounded: ties
        t = f1_max_threshold(labels, scores)
        assert t.f1 == pytest.approx(brute_force_f1(labels, scores), abs=1e-12)
        flagged = scores >= t.value
        assert t.precision == pytest.approx((flagged & labels).sum() / flagged.sum())
        assert t.recall == pytest.approx((flagged & labels).sum() / labels.sum())
        assert t.f1 == pytest.approx(2 * t.precision * t.recall / (t.precision + t.recall))


def test_calibrate_stores_thresholds_in_the_checkpoint_and_detect_then_labels(
    shared_data: Path, tmp_path: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint.save(tiny_model(), tmp_path / "ckpt")
    bottle = shared_data / "MVTec_AD" / "bottle" / "test"
    args = ["calibrate", str(bottle / "good"), "--anomalous", str(bottle / "broken_large"), "--checkpoint"]
    assert main([*args, str(tmp_path / "ckpt"), "--workers", "0"]) == 0
    stored = checkpoint.read_document(tmp_path / "ckpt")["calibration"]
    assert stored["image"]["method"] == "f1_max" and stored["pixel"]["method"] == "false_alarm_rate"
    assert (
        main(
            [
                "detect",
                str(bottle / "good"),
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--out",
                str(tmp_path / "o"),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((tmp_path / "o" / "scores.csv").read_text().splitlines()))
    assert all(r["label"] == str(int(float(r["score"]) >= stored["image_threshold"])) for r in rows)
    assert len(list((tmp_path / "o" / "maps").glob("*.mask.png"))) == len(rows)


def test_training_free_calibration_is_a_standalone_json_with_the_model_config(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cal.json"
    normal = shared_data / "BrainMRI" / "brain_tumor_dataset" / "no"
    assert main(["calibrate", str(normal), "--out", str(out), *TINY_FLAGS]) == 0
    assert "warning: only 98 normal images" in capsys.readouterr().err
    document = json.loads(out.read_text())
    assert document["model"]["backbone"] == "kanoclip-tiny"
    assert document["calibration"]["image"]["images"] == 98
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["detect", str(normal), "--calibration", str(out), "--out", str(tmp_path / "o"), *TINY_FLAGS]) == 0
    assert not [str(w.message) for w in caught if "another model" in str(w.message)]
    rows = list(csv.DictReader((tmp_path / "o" / "scores.csv").read_text().splitlines()))
    flagged = sum(int(r["label"]) for r in rows)
    assert flagged == 0  # 1% of 98 normal images: no false alarm allowed on the calibration images themselves


def test_normal_folders_after_anomalous_ones_stay_normal(shared_data: Path, tmp_path: Path) -> None:
    """`calibrate --anomalous bad/ good/` once swallowed good/ into the anomalous list."""
    bottle = shared_data / "MVTec_AD" / "bottle" / "test"
    out = tmp_path / "cal.json"
    args = ["calibrate", "--anomalous", str(bottle / "broken_large"), str(bottle / "good"), "--out", str(out)]
    assert main([*args, *TINY_FLAGS]) == 0
    image = json.loads(out.read_text())["calibration"]["image"]
    assert image["method"] == "f1_max"
    assert image["images"] == len(list((bottle / "good").iterdir())) + len(list((bottle / "broken_large").iterdir()))


def test_unreadable_images_are_listed_and_calibration_exits_1(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good"
    shutil.copytree(shared_data / "MVTec_AD" / "bottle" / "test" / "good", good)
    (good / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    assert main(["calibrate", str(good), "--out", str(tmp_path / "cal.json"), *TINY_FLAGS]) == 1
    assert "broken.png" in capsys.readouterr().err
    assert json.loads((tmp_path / "cal.json").read_text())["calibration"]["image"]["images"] == 5


def test_a_per_pixel_false_alarm_threshold_needs_no_float64_copy_of_the_pixels() -> None:
    """Calibrating maps over many images once sorted a float64 copy of every pixel (4x the float16 maps)."""
    maps = np.random.default_rng(0).random((200, 224, 224), dtype=np.float32).astype(np.float16)
    tracemalloc.start()
    try:
        t = false_alarm_threshold(maps, 0.01, unit="pixels")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 1.5 * maps.nbytes  # one partitioned float16 copy at most
    assert (maps >= t.value).sum() <= 0.01 * maps.size < (maps >= np.nextafter(np.float16(t.value), -1)).sum() + 1


def test_thresholds_set_on_another_bank_are_refused_on_the_cli_and_flagged_over_http(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Zero-shot thresholds once labelled every few-shot score (0.28-0.46 under 0.528) normal, defects included."""
    from kanoclip.station.serve import ServeConfig

    from .conftest import tiny_detector
    from .serving import running_server

    hazelnut = shared_data / "MVTec_derived_hazelnut_toy"
    goods = sorted(hazelnut.rglob("train/good/*"))
    flags = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]
    cal = tmp_path / "zero.json"
    assert main(["calibrate", *map(str, goods[:6]), "--out", str(cal), *flags]) == 0
    query = str(sorted(hazelnut.rglob("test/*/*.jpg"))[0])
    base = ["detect", query, "--out", str(tmp_path / "o"), "--overwrite", *flags]
    detect = [*base, "--calibration", str(cal)]
    capsys.readouterr()
    assert main([*detect, "--reference", str(goods[7])]) == 2
    assert "references: calibrated on None" in capsys.readouterr().err
    assert main(detect) == 0  # the run it was calibrated on
    assert main([*detect, "--class-name", "screw"]) == 2  # another class text
    few = tmp_path / "few.json"
    assert main(["calibrate", *map(str, goods[:6]), "--reference", str(goods[7]), "--out", str(few), *flags]) == 0
    assert main([*base, "--calibration", str(few), "--reference", str(goods[7])]) == 0
    assert main([*detect, "--reference", str(goods[7]), "--threshold", "0.5"]) == 0  # the user's own number

    det = tiny_detector(calibration=str(cal))
    image = [("files", ("q.jpg", Path(query).read_bytes()))]
    with running_server(det, ServeConfig()) as url:
        assert httpx.post(f"{url}/v1/detect", files=image, timeout=60).json()["threshold_warning"] is None
        good = [("files", (goods[7].name, goods[7].read_bytes()))]
        assert httpx.post(f"{url}/v1/references", files=good, timeout=60).status_code == 200
        body = httpx.post(f"{url}/v1/detect", files=image, timeout=60).json()
        assert "references: calibrated on None" in body["threshold_warning"]
        assert "recalibrate" in httpx.get(f"{url}/v1/info", timeout=30).json()["threshold_warning"]
