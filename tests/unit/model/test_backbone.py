"""Loading CLIP from checkpoints the tests write themselves, the positional-embedding resize, and clear errors."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import kanoclip
import kanoclip.model.checkpoint
from kanoclip import KAnoCLIP, KAnoCLIPConfig
from kanoclip.errors import BackboneError, CheckpointError
from kanoclip.model import backbone
from kanoclip.model.backbone import from_model, load_backbone, resize_positional_embedding
from tests.conftest import randomize_learnable, tiny_clip


def outputs_of(model: KAnoCLIP, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    images = torch.rand(2, 3, 98, 98)
    with torch.inference_mode():
        out = model(images)
    return out.pred_score, out.anomaly_map


def pair(clip: torch.nn.Module, pretrained: Path, backbone: str) -> tuple[KAnoCLIP, KAnoCLIP]:
    """The model built from the in-memory CLIP and the one built from the file, with equal learnable weights."""
    config = KAnoCLIPConfig(backbone=backbone, pretrained=str(pretrained), image_size=98)
    torch.manual_seed(0)
    reference = KAnoCLIP(config, from_model(clip, config)).eval()
    randomize_learnable(reference)
    loaded = KAnoCLIP(config).eval()
    loaded.load_learnable_state_dict(reference.learnable_state_dict())
    return reference, loaded


def assert_same_outputs(a: KAnoCLIP, b: KAnoCLIP) -> None:
    for x, y in zip(outputs_of(a), outputs_of(b), strict=True):
        assert torch.allclose(x, y, atol=1e-6, rtol=0), (x - y).abs().max()


def test_openai_torchscript_checkpoint_loads_and_matches_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = tiny_clip(layers=8)
    images, tokens = torch.rand(1, 3, 56, 56), open_clip.tokenize(["a photo"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(clip, {"encode_image": (images,), "encode_text": (tokens,)}, check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    traced.save(str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(backbone, "openai_sha256s", lambda: {digest})  # as if OpenAI had published this file
    assert_same_outputs(*pair(clip, path, "ViT-B-16"))


def test_a_torchscript_file_that_is_not_openais_is_not_executed_without_the_users_word(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TorchScript runs code embedded in the file at load: only OpenAI's releases (by sha256) load without a flag."""
    clip = tiny_clip(layers=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(clip, {"encode_image": (torch.rand(1, 3, 56, 56),)}, check_trace=False)
    path = tmp_path / "downloaded.pt"
    traced.save(str(path))
    known = backbone.openai_sha256s()
    assert "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02" in known  # ViT-L-14-336, OpenAI's URL
    loads: list[str] = []
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(str(a[0])) or real_load(*a, **k))
    monkeypatch.delenv(backbone.TRUST_TORCHSCRIPT, raising=False)
    with pytest.raises(BackboneError, match="--trust-torchscript"):
        KAnoCLIP(KAnoCLIPConfig(backbone="ViT-B-16", pretrained=str(path), image_size=56))
    assert loads == []  # refused before torch.jit.load could run anything
    monkeypatch.setenv(backbone.TRUST_TORCHSCRIPT, "1")
    KAnoCLIP(KAnoCLIPConfig(backbone="ViT-B-16", pretrained=str(path), image_size=56))
    assert loads == [str(path)]


def test_a_text_file_as_weights_says_it_is_not_a_weights_file(tmp_path: Path) -> None:
    notes = tmp_path / "notes.pt"
    notes.write_text("these are my notes, not weights")
    with pytest.raises(BackboneError, match="is not a weights file"):
        KAnoCLIP(KAnoCLIPConfig(backbone="ViT-B-16", pretrained=str(notes), image_size=56))


def test_openai_state_dict_checkpoint_loads_and_matches_its_source(tmp_path: Path) -> None:
    clip = tiny_clip(layers=8).half().float()  # OpenAI ships fp16 weights: make the source exactly representable
    state = {k: v.half() if v.is_floating_point() else v for k, v in clip.state_dict().items()}
    state.update(input_resolution=torch.tensor(56), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = tmp_path / "ViT-tiny-sd.pt"
    torch.save(state, path)
    assert_same_outputs(*pair(clip, path, "ViT-B-16"))


@pytest.mark.parametrize("fmt", ["training", "safetensors"])
def test_open_clip_checkpoints_load_and_match_their_source(tmp_path: Path, fmt: str) -> None:
    torch.manual_seed(2)
    clip = open_clip.create_model("kanoclip-tiny").eval()
    if fmt == "training":  # what open_clip's trainer writes: DDP "module." prefixes under "state_dict"
        path = tmp_path / "epoch_3.pt"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}, path)
    else:
        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    assert_same_outputs(*pair(clip, path, "kanoclip-tiny"))


def test_open_clip_checkpoint_of_another_architecture_is_a_clear_error(tmp_path: Path) -> None:
    clip = open_clip.create_model("kanoclip-tiny")
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    with pytest.raises(BackboneError, match="--backbone"):
        load_backbone(KAnoCLIPConfig(backbone="ViT-B-16", pretrained=str(path), image_size=224))


def test_positional_embedding_resize_is_the_identity_at_the_native_resolution() -> None:
    pos = torch.randn(1 + 24 * 24, 32)
    assert torch.equal(resize_positional_embedding(pos, (24, 24)), pos)


def test_positional_embedding_resize_is_bilinear_and_keeps_the_cls_position() -> None:
    grid = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    pos = torch.cat([torch.tensor([[7.0]]), grid.reshape(4, 1)])
    out = resize_positional_embedding(pos, (4, 4))
    assert out[0, 0] == 7.0
    # Half-pixel-centred bilinear with edge clamping, written out: source coordinate (i + 0.5) / 2 - 0.5.
    coords = [max(0.0, min(1.0, (i + 0.5) / 2 - 0.5)) for i in range(4)]
    want = torch.tensor([[(1 - r) * ((1 - c) * 0 + c * 1) + r * ((1 - c) * 2 + c * 3) for c in coords] for r in coords])
    assert torch.allclose(out[1:, 0].reshape(4, 4), want, atol=1e-6)


def test_model_runs_at_the_resized_resolution_and_matches_open_clip_there() -> None:
    clip = tiny_clip(layers=8)
    config = KAnoCLIPConfig(backbone="x", pretrained="none", image_size=140)
    backbone = from_model(clip, config)
    assert backbone.visual.positional_embedding.shape[0] == 1 + 10 * 10
    assert backbone.visual.image_size == (140, 140)
    images = torch.randn(1, 3, 140, 140)
    assert clip.encode_image(images).shape == (1, 64)


def test_default_backbone_offline_says_how_to_point_at_a_local_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing to find locally
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(BackboneError) as err:
        load_backbone(KAnoCLIPConfig())
    message = str(err.value)
    assert "--pretrained /path/to/file" in message and "ViT-L-14-336" in message and "none" in message


def test_unknown_names_and_tags_are_clear_errors() -> None:
    with pytest.raises(BackboneError, match="unknown backbone"):
        load_backbone(KAnoCLIPConfig(backbone="ViT-Q-99"))
    with pytest.raises(BackboneError, match="known tags"):
        load_backbone(KAnoCLIPConfig(backbone="ViT-B-16", pretrained="no-such-tag"))
    with pytest.raises(BackboneError, match="multiple of the patch size"):
        load_backbone(KAnoCLIPConfig(backbone="kanoclip-tiny", pretrained="none", image_size=100))


def test_non_vit_backbones_are_refused_with_a_reason() -> None:
    with pytest.raises(BackboneError, match="plain ViT CLIP"):
        load_backbone(KAnoCLIPConfig(backbone="RN50", pretrained="none", image_size=224))


def test_backbone_is_frozen_and_stays_in_eval_mode(model: KAnoCLIP) -> None:
    model.train()
    assert not model.clip.training
    assert all(not p.requires_grad for p in model.clip.parameters())
    assert F.normalize(model.encode_text(["a photo"]), dim=-1).shape == (1, 64)


def gelu_default_config(tmp_path: Path) -> Path:
    """An architecture whose open_clip config says nothing of QuickGELU, like ViT-L-14-336's own config."""
    path = tmp_path / "tiny-gelu-default.json"
    vision = {"image_size": 56, "layers": 8, "width": 64, "patch_size": 14}
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 12}
    path.write_text(json.dumps({"embed_dim": 64, "vision_cfg": vision, "text_cfg": text}))
    return path


def write_quick_gelu_weights(clip: torch.nn.Module, fmt: str, tmp_path: Path) -> Path:
    """The same QuickGELU weights in every file format OpenAI's CLIP is distributed in."""
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    if fmt == "openai-torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inputs = {"encode_image": (torch.rand(1, 3, 56, 56),), "encode_text": (open_clip.tokenize(["a"]),)}
            traced = torch.jit.trace_module(clip, inputs, check_trace=False)
        path = tmp_path / "ViT-tiny.pt"
        traced.save(str(path))
    elif fmt == "openai-state-dict":
        path = tmp_path / "ViT-tiny-sd.pt"
        meta = {"input_resolution": torch.tensor(56), "context_length": torch.tensor(77)}
        torch.save({**{k: v.half() for k, v in state.items()}, **meta, "vocab_size": torch.tensor(49408)}, path)
    elif fmt == "hf-safetensors-with-config":  # a Hugging Face repo such as timm/vit_large_patch14_clip_336.openai
        folder = tmp_path / "repo"
        folder.mkdir()
        path = folder / "open_clip_model.safetensors"
        save_file(state, str(path))
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    else:  # the HF cache's layout, the tag in the folder name, no config beside the file
        folder = tmp_path / "models--timm--vit_tiny_clip.openai" / "snapshots" / "0123abc"
        folder.mkdir(parents=True)
        path = folder / "open_clip_pytorch_model.bin"
        torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "fmt", ["openai-torchscript", "openai-state-dict", "hf-safetensors-with-config", "hf-cache-bin-openai-path"]
)
def test_quick_gelu_weights_load_as_trained_from_every_file_format(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI weights from an open_clip .safetensors/.bin once ran with nn.GELU (outputs drifted by 0.015)."""
    monkeypatch.setenv(backbone.TRUST_TORCHSCRIPT, "1")  # a TorchScript file written here, not OpenAI's
    clip = tiny_clip(layers=8).half().float()  # fp16-exact, so the fp16 state dict holds the same weights
    path = write_quick_gelu_weights(clip, fmt, tmp_path)
    reference, loaded = pair(clip, path, str(gelu_default_config(tmp_path)))
    assert_same_outputs(reference, loaded)
    assert loaded.config.quick_gelu is True  # resolved and recorded, so checkpoints rebuild it
    kanoclip.save(loaded, tmp_path / "ckpt")
    assert kanoclip.model.checkpoint.read_document(tmp_path / "ckpt")["model"]["quick_gelu"] is True


def test_a_file_without_any_hint_follows_its_architecture_and_quick_gelu_overrides(tmp_path: Path) -> None:
    clip = tiny_clip(layers=8)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    arch = str(gelu_default_config(tmp_path))
    assert KAnoCLIP(KAnoCLIPConfig(backbone=arch, pretrained=str(path), image_size=98)).config.quick_gelu is False
    config = KAnoCLIPConfig(backbone=arch, pretrained=str(path), image_size=98, quick_gelu=True)
    torch.manual_seed(0)
    reference = KAnoCLIP(config, from_model(clip, config)).eval()
    loaded = KAnoCLIP(config).eval()
    loaded.load_learnable_state_dict(reference.learnable_state_dict())
    assert_same_outputs(reference, loaded)


def test_a_checkpoint_refuses_other_backbone_weights_but_takes_the_same_weights_in_another_format(
    tmp_path: Path,
) -> None:
    arch = str(gelu_default_config(tmp_path))
    clip = tiny_clip(layers=8).half().float()
    first = write_quick_gelu_weights(clip, "hf-safetensors-with-config", tmp_path)
    same = write_quick_gelu_weights(clip, "openai-state-dict", tmp_path)
    other = write_quick_gelu_weights(tiny_clip(layers=8, seed=1), "hf-cache-bin-openai-path", tmp_path)
    model = KAnoCLIP(KAnoCLIPConfig(backbone=arch, pretrained=str(first), image_size=98))
    kanoclip.save(model, tmp_path / "ckpt")
    assert kanoclip.load(tmp_path / "ckpt", pretrained=str(same)).backbone_fingerprint == model.backbone_fingerprint
    with pytest.raises(CheckpointError, match="fingerprint"):
        kanoclip.load(tmp_path / "ckpt", pretrained=str(other))
    with pytest.raises(CheckpointError, match="quick_gelu=True"):
        kanoclip.load(tmp_path / "ckpt", quick_gelu=False)
