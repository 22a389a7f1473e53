"""The run configuration: the CLI turns flags into a RunConfig, and what cannot apply is refused, never ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from kanoclip.cli import main

# Every flag that means something only to the PyTorch engine, with a value.
TORCH_ONLY = [
    ("--checkpoint", "runs/x/final"),
    ("--backbone", "ViT-L-14"),
    ("--pretrained", "none"),
    ("--set", "map_sigma=2"),
    ("--preset", "model.json"),
    ("--class-name", "bottle"),
    ("--reference", "good/"),
    ("--device", "cpu"),
    ("--precision", "bf16"),
    ("--compile", None),
]


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
@pytest.mark.parametrize(("flag", "value"), TORCH_ONLY, ids=[f for f, _ in TORCH_ONLY])
def test_every_flag_an_exported_engine_cannot_honour_is_refused_by_name(
    engine: str, flag: str, value: str | None, tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = shared_data / "MVTec_AD/bottle/test/good/000.png"
    given = [flag] if value is None else [flag, value]
    args = ["detect", str(image), "--out", str(tmp_path / "out"), "--engine", engine, "--exported", str(tmp_path)]
    assert main([*args, *given]) == 2
    err = capsys.readouterr().err
    refused, _, why = err.partition(" cannot be used here")
    assert flag in refused and "baked in" in why
    assert not (tmp_path / "out").exists()  # refused before anything ran
