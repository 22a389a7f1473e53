"""Calibration: false-alarm thresholds hold on held-out normals, F1-max equals brute force, stored where used."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import httpx
import pytest

from kanoclip.cli import main
from kanoclip.model import checkpoint
from tests.conftest import tiny_model

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]


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


def test_thresholds_set_on_another_bank_are_refused_on_the_cli_and_flagged_over_http(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Zero-shot thresholds once labelled every few-shot score (0.28-0.46 under 0.528) normal, defects included."""
    from kanoclip.station.serve import ServeConfig
    from tests.conftest import tiny_detector
    from tests.support.serving import running_server

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
