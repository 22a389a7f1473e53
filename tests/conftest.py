"""Shared fixtures: tiny random CLIP models (no downloads) and the real data in ../shared/data."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from kanoclip import KAnoCLIP, KAnoCLIPConfig
from kanoclip.backbone import from_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY = KAnoCLIPConfig(backbone="kanoclip-tiny", pretrained="none", image_size=112)


def tiny_clip(layers: int = 24, seed: int = 0) -> CLIP:
    """A random CLIP with OpenAI's layout and widths that OpenAI's loader can infer (multiples of 64)."""
    torch.manual_seed(seed)
    return CLIP(
        64,
        CLIPVisionCfg(layers=layers, width=64, patch_size=14, image_size=56),
        CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=12),
        quick_gelu=True,
    ).eval()


def tiny_model(seed: int = 0, **changes: object) -> KAnoCLIP:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return KAnoCLIP(TINY.replace(**changes)).eval()


def randomize_learnable(model: KAnoCLIP, seed: int = 1) -> None:
    """Give the zero-initialised output layers non-zero weights, so every learnable path is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture
def model() -> KAnoCLIP:
    return tiny_model()


@pytest.fixture
def clip24() -> CLIP:
    return tiny_clip()


@pytest.fixture
def model24(clip24: CLIP) -> KAnoCLIP:
    config = KAnoCLIPConfig(backbone="test", pretrained="none", image_size=98)
    torch.manual_seed(0)
    return KAnoCLIP(config, from_model(clip24, config)).eval()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"the shared test data is expected at {SHARED_DATA}"
    return SHARED_DATA
