"""The run configuration: the CLI turns flags into a RunConfig, and what cannot apply is refused, never ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from kanoclip.cli import main
from kanoclip.errors import ConfigError
from kanoclip.inference.config import RunConfig

# Every flag that means something only to the PyTorch engine, with a value.
TORCH_ONLY = [
    ("--checkpoint", "runs/x/final"),
    ("--backbone", "ViT-L-14"),
    ("--pretrained", "none"),
    ("--set", "map_sigma=2"),
    ("--config", "model.json"),
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


def test_the_run_size_may_be_named_with_an_exported_folder_but_not_the_backbone() -> None:
    RunConfig(engine="onnxruntime", exported="m", model_changes=(("image_size", 224),))  # checked on the manifest
    with pytest.raises(ConfigError, match="--backbone, --set map_sigma cannot"):
        RunConfig(engine="onnxruntime", exported="m", model_changes=(("backbone", "ViT-B-16"), ("map_sigma", 2.0)))
    with pytest.raises(ConfigError, match="--exported"):
        RunConfig(engine="openvino")
    with pytest.raises(ConfigError, match="add --engine"):
        RunConfig(exported="m")


def test_a_checkpoint_takes_only_where_its_clip_lives_and_one_bank_file_stands_alone() -> None:
    RunConfig(checkpoint="c", model_changes=(("pretrained", "/models/x.pt"), ("image_size", 336)))
    with pytest.raises(ConfigError, match="--set map_sigma cannot"):
        RunConfig(checkpoint="c", model_changes=(("map_sigma", 2.0),))
    with pytest.raises(ConfigError, match="--config cannot"):
        RunConfig(checkpoint="c", model_file="m.json")
    with pytest.raises(ConfigError, match="one bank file"):
        RunConfig(references=("a.kref", "good/"))
    with pytest.raises(ConfigError, match="unknown config field"):
        RunConfig(model_changes=(("no_such_field", 1),))
    with pytest.raises(ConfigError, match="engine must be one of"):
        RunConfig(engine="tensorrt")
