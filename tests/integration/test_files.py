"""Files a user can damage or edit by hand (checkpoints, bank files, export manifests) are refused with what to do,
and a model that computes NaN never labels an image: a NaN-filled file once gave `nan,0` (normal) with exit 0."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import kanoclip
from kanoclip.cli import main
from kanoclip.model.references import ReferenceBank
from tests.conftest import tiny_detector, tiny_model

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]


def image(shared_data: Path) -> str:
    return str(shared_data / "MVTec_AD/bottle/test/good/000.png")


def test_a_nan_checkpoint_fails_each_image_instead_of_labelling_it(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_model()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.fill_(float("nan"))  # saved with a matching hash: only the outputs show it
    kanoclip.save(model, tmp_path / "nan")
    out = tmp_path / "out"
    flags = ["--checkpoint", str(tmp_path / "nan"), "--threshold", "0.5", "--workers", "0"]
    assert main(["detect", image(shared_data), "--out", str(out), *flags]) == 1
    assert "non-finite" in capsys.readouterr().err
    assert list(csv.DictReader((out / "scores.csv").read_text().splitlines())) == []  # no row, so no label


def test_a_checkpoint_edited_after_saving_is_refused(shared_data: Path, tmp_path: Path) -> None:
    kanoclip.save(tiny_model(), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(str(weights))
    save_file({k: torch.full_like(v, float("nan")) for k, v in state.items()}, str(weights))
    assert main(["detect", image(shared_data), "--checkpoint", str(tmp_path / "ckpt"), "--workers", "0"]) == 2


def bank_file(tmp_path: Path, shared_data: Path) -> Path:
    det = tiny_detector()
    det.add_references([image(shared_data)])
    assert det.references is not None
    return det.references.save(tmp_path / "good.kref")


def rewrite(path: Path, header_change: dict[str, object], levels: list[torch.Tensor] | None = None) -> None:
    bank = ReferenceBank.load(path)
    tensors = {f"level_{i}": t for i, t in enumerate(levels if levels is not None else bank.levels)}
    header = {"format": "kanoclip-reference-bank/1", "identity": bank.identity, "sources": bank.sources}
    header["sha256"] = ReferenceBank(list(tensors.values()), bank.identity).content_sha256()
    header.update(header_change)
    save_file(tensors, str(path), metadata={"kanoclip": json.dumps({k: v for k, v in header.items() if v is not None})})


@pytest.mark.parametrize("edit", ["nan", "no-identity", "feature-size", "missing-level", "changed-values"])
def test_hand_edited_bank_files_are_clear_errors(
    edit: str, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = bank_file(tmp_path, shared_data)
    levels = ReferenceBank.load(path).levels
    if edit == "nan":
        rewrite(path, {}, [torch.full_like(t, float("nan")) for t in levels])
    elif edit == "no-identity":
        rewrite(path, {"identity": None})
    elif edit == "feature-size":
        rewrite(path, {}, [t[:, :32].contiguous() for t in levels])
    elif edit == "missing-level":
        rewrite(path, {}, levels[:-1])
    else:
        bank = ReferenceBank.load(path)
        header = {"format": "kanoclip-reference-bank/1", "identity": bank.identity, "sources": bank.sources}
        header["sha256"] = bank.content_sha256()
        save_file({f"level_{i}": t * 0.5 for i, t in enumerate(levels)}, str(path), {"kanoclip": json.dumps(header)})
    assert (
        main(["detect", image(shared_data), "--out", str(tmp_path / "o"), "--reference", str(path), *TINY_FLAGS]) == 2
    )
    err = capsys.readouterr().err
    assert "kanoclip: error:" in err and "Traceback" not in err and "reference build" in err


def manifest_folder(tmp_path: Path, **changes: object) -> Path:
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not a graph")
    manifest = {
        "kanoclip_version": kanoclip.__version__,
        "format": "onnx",
        "precision": "fp32",
        "files": {"model": "model.onnx"},
        "image_size": 112,
        "config": {"backbone": "kanoclip-tiny", "pretrained": "none", "image_size": 112},
        "thresholds": {"image_threshold": None, "pixel_threshold": None},
        "text": {"source": "knowledge"},
    }
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if v is not None}))
    return folder


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"files": None}, "'files' is missing"),
        ({"config": None}, "'config' is missing"),
        ({"precision": "fp64"}, "precision 'fp64'"),
        ({"image_size": "big"}, "'image_size' is missing or not a int"),
        ({"config": {"image_size": "big"}}, "image_size must be int"),
        ({"files": {"model": "../../etc/passwd"}}, "outside the exported folder"),
        ({"files": {"model": "gone.onnx"}}, "missing"),
    ],
)
def test_hand_edited_manifests_are_clear_errors(
    changes: dict[str, object], words: str, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = manifest_folder(tmp_path, **changes)
    args = ["detect", image(shared_data), "--out", str(tmp_path / "o"), "--engine", "onnxruntime"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*args, "--exported", str(folder), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
