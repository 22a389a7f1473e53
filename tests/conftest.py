"""Shared fixtures: tiny random CLIP models (no downloads) and the real data in ../shared/data."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from kanoclip import Detector, KAnoCLIP, KAnoCLIPConfig
from kanoclip.inference.config import RunConfig
from kanoclip.model.backbone import from_model

SHARED_DATA = Path(
    os.environ.get("KANOCLIP_TEST_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
).expanduser()
DATA_SOURCES = """the real test data is expected at {where} (set KANOCLIP_TEST_DATA to another folder).
It holds small subsets of public datasets in their original layouts; each comes from:
  KolektorSDD/       KolektorSDD v1 (ViCoS, Univ. of Ljubljana), e.g. via github.com/seanXYZ/SegDecNet Data/
  BrainMRI/          Kaggle "Brain MRI Images for Brain Tumor Detection" (navoneel), brain_tumor_dataset/
  HeadCT/            Kaggle "Head CT - hemorrhage" (felipekitamura): labels.csv + head_ct/head_ct/*.png
  Kvasir-SEG/        Kvasir-SEG (Simula): Kvasir-SEG/images + masks
  MVTec_AD/          MVTec AD (mvtec.com), the bottle class
  MVTec_derived_hazelnut_toy/  the hazelnut test asset of OpenVINO's anomalib/OTX, built from MVTec AD hazelnut
  VisA/              VisA's official split_csv/1cls.csv (github.com/amazon-science/spot-diff)
The project's shared/data/MANIFEST.md and PROVENANCE.csv list every file, its source and commit."""
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


def tiny_detector(config: KAnoCLIPConfig = TINY, **run: object) -> Detector:
    """A detector on a tiny random model, built by the one factory (CPU, decoding in the main process)."""
    fields: dict[str, object] = {"device": "cpu", "workers": 0, **run}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Detector.from_config(RunConfig.with_model(config, **fields))


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
    if not SHARED_DATA.is_dir():
        pytest.fail(DATA_SOURCES.format(where=SHARED_DATA), pytrace=False)
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _user_folders_in_a_temporary_place(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`serve` keeps its state under the user's data folder by default: in tests that is a temporary one (children
    inherit it), never the home of whoever runs them."""
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
