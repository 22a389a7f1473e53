"""Presets as data (model/presets/*.json): every shipped preset builds and runs, at tiny size so no weights download."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import kanoclip
from kanoclip import KAnoCLIPConfig
from kanoclip.errors import ConfigError
from kanoclip.model import presets
from kanoclip.model.presets import create_model, list_models, preset

TINY_SIZE = {"backbone": "kanoclip-tiny", "pretrained": "none", "image_size": 56}  # any preset, shrunk: no download
RANDOM_WEIGHTS = "ignore:building .* with RANDOM weights:UserWarning"


def test_the_shipped_presets_are_the_files_and_the_public_api_lists_them() -> None:
    assert list_models() == sorted(p.stem for p in presets.FOLDER.glob("*.json"))
    assert {"kanoclip-vit-l-14-336", "kanoclip-tiny"} <= set(list_models())
    assert kanoclip.list_models is list_models and kanoclip.create_model is create_model
    assert preset("kanoclip-vit-l-14-336") == KAnoCLIPConfig()  # the paper's model is the default config


@pytest.mark.parametrize("name", list_models())
def test_each_preset_file_holds_real_config_fields_and_a_one_line_description(name: str) -> None:
    data = json.loads((presets.FOLDER / f"{name}.json").read_text(encoding="utf-8"))
    fields = {f.name for f in dataclasses.fields(KAnoCLIPConfig)}
    assert set(data) - {"description"} <= fields, set(data) - fields
    assert isinstance(data["description"], str) and data["description"] and "\n" not in data["description"]
    assert presets.description(name) == data["description"]
    config = preset(name)
    assert all(getattr(config, k) == (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in fields)


@pytest.mark.filterwarnings(RANDOM_WEIGHTS)
@pytest.mark.parametrize("name", list_models())
def test_every_preset_builds_and_runs_at_tiny_size(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, **TINY_SIZE)
    own = preset(name)
    for field in ("tap_mode", "global_ln_post", "level_fusion", "score_mode", "adapter"):
        assert getattr(model.config, field) == getattr(own, field), field  # the preset's choices survive the shrink
    assert not model.training
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 56, 56))
    assert out.pred_score.shape == (2,) and out.anomaly_map.shape == (2, 56, 56)
    assert torch.isfinite(out.pred_score).all() and torch.isfinite(out.anomaly_map).all()


def test_an_unknown_name_is_a_config_error_naming_the_close_matches() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'kanoclip-vit-l-14'; did you mean kanoclip-vit-l-14-336"):
        preset("kanoclip-vit-l-14")
    with pytest.raises(ConfigError, match=r"did you mean kanoclip-tiny") as err:
        kanoclip.create_model("kanoclip-tiyn")
    assert "kanoclip-vit-b-16-224" in str(err.value)  # the full list follows the guess
    with pytest.raises(ConfigError, match=r"unknown preset .resnet50. \(presets: "):
        preset("resnet50")


@pytest.mark.filterwarnings(RANDOM_WEIGHTS)
def test_overrides_are_config_fields_applied_over_the_preset() -> None:
    model = create_model("kanoclip-tiny", image_size=56, tap_mode="top", map_sigma=2.0, tap_layers=[4, 8])
    assert model.config.image_size == 56 and model.config.tap_mode == "top" and model.config.map_sigma == 2.0
    assert model.config.tap_layers == (4, 8) and model.config.pretrained == "none"
    assert create_model("kanoclip-tiny").config.image_size == 112  # the preset's own size without overrides
    with pytest.raises(ConfigError, match=r"unknown KAnoCLIPConfig field.*image_szie"):
        create_model("kanoclip-tiny", image_szie=56)
    with pytest.raises(ConfigError, match="tap_mode must be one of"):
        create_model("kanoclip-tiny", tap_mode="bottom")
