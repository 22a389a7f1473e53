"""The run configuration: the CLI turns flags into a RunConfig, and what cannot apply is refused, never ignored."""

from __future__ import annotations

import pytest

from kanoclip.errors import ConfigError
from kanoclip.inference.config import RunConfig


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
    with pytest.raises(ConfigError, match="--preset cannot"):
        RunConfig(checkpoint="c", model_file="m.json")
    with pytest.raises(ConfigError, match="one bank file"):
        RunConfig(references=("a.kref", "good/"))
    with pytest.raises(ConfigError, match="unknown config field"):
        RunConfig(model_changes=(("no_such_field", 1),))
    with pytest.raises(ConfigError, match="engine must be one of"):
        RunConfig(engine="tensorrt")
