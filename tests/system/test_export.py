"""Export (SPEC §10): ONNX Runtime and OpenVINO run the same graph as PyTorch, through the same Detector and files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from kanoclip import __version__
from kanoclip.cli import main
from kanoclip.errors import ConfigError
from kanoclip.inference.backends import MANIFEST, read_manifest, require
from kanoclip.inference.config import RunConfig
from kanoclip.inference.detector import Detector
from tests.conftest import tiny_detector

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]
pytestmark = pytest.mark.slow  # exports through torch.onnx / OpenVINO / NNCF


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    """The tiny model with a good part as reference, exported once per format through the CLI."""
    root = tmp_path_factory.mktemp("export")
    good = sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("train/good/*"))[0]
    folders = {}
    for fmt in ("onnx", "openvino"):
        folders[fmt] = root / fmt
        args = ["export", "--format", fmt, "--out", str(folders[fmt]), "--reference", str(good)]
        assert main([*args, "--class-name", "hazelnut", *TINY_FLAGS]) == 0
    folders["good"] = good
    return folders


def exported_detector(engine: str, folder: Path, **run: object) -> Detector:
    return Detector.from_config(RunConfig(engine=engine, exported=str(folder), workers=0, **run))  # type: ignore[arg-type]


def real_images(shared_data: Path) -> list[Path]:
    files = sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("test/*/*.jpg"))[:6]
    return files + sorted((shared_data / "KolektorSDD" / "kos01").glob("Part*.jpg"))[:2]  # grey, another shape


@pytest.mark.parametrize(
    ("engine", "fmt"), [("onnxruntime", "onnx"), ("openvino", "openvino"), ("onnxruntime", "openvino")]
)
def test_exported_engines_give_pytorchs_outputs_on_real_images(
    exported: dict[str, Path], shared_data: Path, engine: str, fmt: str
) -> None:
    reference = tiny_detector(class_name="hazelnut", references=(str(exported["good"]),))
    if fmt == "openvino" and engine == "onnxruntime":
        with pytest.raises(ConfigError, match="--engine openvino"):
            exported_detector(engine, exported[fmt])
        return
    det = exported_detector(engine, exported[fmt])
    files = real_images(shared_data)
    for want, got in zip(reference.run(files), det.run(files), strict=True):
        assert want.pred_score is not None and got.pred_score is not None
        assert abs(want.pred_score - got.pred_score) < 1e-4
        assert np.abs(want.anomaly_map - got.anomaly_map).max() < 1e-3  # type: ignore[operator]
    assert det.describe()["references"]["images"] == 1 and det.text_record["class"] == "hazelnut"


@pytest.mark.parametrize(("engine", "fmt"), [("onnxruntime", "onnx"), ("openvino", "openvino")])
def test_detect_through_an_engine_writes_the_same_files_as_pytorch(
    exported: dict[str, Path], shared_data: Path, tmp_path: Path, engine: str, fmt: str
) -> None:
    inputs = [str(p) for p in real_images(shared_data)]
    torch_args = ["--reference", str(exported["good"]), "--class-name", "hazelnut", *TINY_FLAGS]
    assert main(["detect", *inputs, "--out", str(tmp_path / "torch"), "--threshold", "0.5", *torch_args]) == 0
    engine_args = ["--engine", engine, "--exported", str(exported[fmt]), "--workers", "0"]
    assert main(["detect", *inputs, "--out", str(tmp_path / engine), "--threshold", "0.5", *engine_args]) == 0
    want = list(csv.DictReader((tmp_path / "torch" / "scores.csv").read_text().splitlines()))
    got = list(csv.DictReader((tmp_path / engine / "scores.csv").read_text().splitlines()))
    assert [r["path"] for r in want] == [r["path"] for r in got] and [r["map"] for r in want] == [r["map"] for r in got]
    for a, b in zip(want, got, strict=True):
        assert abs(float(a["score"]) - float(b["score"])) < 1e-4 and a["label"] == b["label"]
        assert np.abs(np.load(tmp_path / "torch" / a["map"]) - np.load(tmp_path / engine / b["map"])).max() < 1e-3
    want_files = sorted(p.relative_to(tmp_path / "torch") for p in (tmp_path / "torch").rglob("*") if p.is_file())
    got_files = sorted(p.relative_to(tmp_path / engine) for p in (tmp_path / engine).rglob("*") if p.is_file())
    assert want_files == got_files
    assert json.loads((tmp_path / engine / "run.json").read_text())["engine"].startswith(engine)


def test_the_manifest_round_trips_and_says_what_the_folder_holds(exported: dict[str, Path]) -> None:
    for fmt in ("onnx", "openvino"):
        written = json.loads((exported[fmt] / MANIFEST).read_text())
        assert read_manifest(exported[fmt]) == written
        assert written["kanoclip_version"] == __version__ and written["format"] == fmt
        assert written["precision"] == "fp32" and written["image_size"] == 112
        assert written["input"]["shape"] == ["batch", 3, 112, 112] and written["config"]["backbone"] == "kanoclip-tiny"
        assert written["backbone_fingerprint"].startswith("kanoclip-tiny|quick_gelu|")
        assert all((exported[fmt] / name).is_file() for name in written["files"].values())
    assert not list(exported["onnx"].parent.glob(".*"))  # no staging folder left behind
    held = sorted(p.relative_to(exported["openvino"]).as_posix() for p in exported["openvino"].rglob("*"))
    assert held == ["manifest.json", "model.bin", "model.xml"]  # no ONNX file (nor its external data) beside them


def test_a_folder_from_another_version_or_resolution_is_refused(exported: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exported for 112 px"):
        exported_detector("onnxruntime", exported["onnx"], model_changes=(("image_size", 224),))
    old = tmp_path / "old"
    shutil.copytree(exported["onnx"], old)
    manifest = json.loads((old / MANIFEST).read_text())
    (old / MANIFEST).write_text(json.dumps({**manifest, "kanoclip_version": "0.0.1"}))
    with pytest.raises(ConfigError, match=r"exported by kanoclip 0\.0\.1"):
        exported_detector("onnxruntime", old)
    with pytest.raises(ConfigError, match=r"manifest\.json is missing"):
        exported_detector("onnxruntime", tmp_path)
    with pytest.raises(ConfigError, match="--exported"):
        RunConfig(engine="openvino")


def test_export_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pip install 'kanoclip\[export\]'"):
        require("a_module_that_is_not_installed")
    base = ["export", "--out", str(tmp_path / "x"), *TINY_FLAGS]
    assert main([*base, "--precision", "int8"]) == 2  # onnx exports are fp32
    assert main([*base, "--format", "openvino", "--precision", "int8"]) == 2  # int8 needs calibration images
    assert not (tmp_path / "x").exists()


def test_int8_through_nncf_runs_and_stays_close_to_fp32(shared_data: Path, tmp_path: Path) -> None:
    calibration = [str(p) for p in sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("train/good/*"))[:8]]
    out = tmp_path / "int8"
    args = ["export", "--format", "openvino", "--precision", "int8", "--out", str(out), *TINY_FLAGS]
    assert main([*args, "--calibration-images", *calibration]) == 0
    assert read_manifest(out)["precision"] == "int8"
    reference = tiny_detector()
    det = exported_detector("openvino", out)
    files = real_images(shared_data)
    want = np.stack([p.anomaly_map for p in reference.run(files, own_size=False)])  # type: ignore[misc]
    got = np.stack([p.anomaly_map for p in det.run(files, own_size=False)])  # type: ignore[misc]
    assert np.isfinite(got).all() and np.corrcoef(want.ravel(), got.ravel())[0, 1] > 0.9


def test_export_replaces_only_an_earlier_export_and_keeps_a_users_files(
    exported: dict[str, Path], tmp_path: Path
) -> None:
    """`export --out DIR` once deleted whatever DIR held (a user's notes, an older export)."""
    notes = tmp_path / "mine" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("line 3 settings")
    assert main(["export", "--out", str(notes.parent), *TINY_FLAGS]) == 2
    assert notes.read_text() == "line 3 settings" and sorted(p.name for p in notes.parent.iterdir()) == ["notes.txt"]
    again = tmp_path / "again"
    shutil.copytree(exported["onnx"], again)
    (again / "model.onnx").write_bytes(b"an older graph")
    previous = os.umask(0o022)
    try:
        assert main(["export", "--out", str(again), *TINY_FLAGS]) == 0  # an earlier export is replaced whole
    finally:
        os.umask(previous)
    assert (again / "model.onnx").read_bytes() != b"an older graph"
    assert stat.S_IMODE(again.stat().st_mode) == 0o755  # the umask's, not mkdtemp's 0700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in again.iterdir())
