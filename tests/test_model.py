"""The assembled model: gradients, shapes, checkpoints, and each part against an independent reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

import kanoclip
from kanoclip import KAnoCLIP, KAnoCLIPConfig
from kanoclip.cli import main
from kanoclip.errors import CheckpointError, ConfigError
from kanoclip.fusion import BiCMCI, LevelCrossAttention
from kanoclip.losses import KnowledgeTargets, dice_loss, focal_loss, kd_loss
from kanoclip.prompts import TextTower
from kanoclip.scoring import gaussian_blur

from .conftest import randomize_learnable, tiny_model


def test_gradients_reach_exactly_the_learnable_parameters_and_none_in_clip(model: KAnoCLIP) -> None:
    randomize_learnable(model)
    model.train()
    out = model.forward_train(torch.rand(2, 3, 112, 112))
    (out.image_logits.sum() + out.level_probs[:, :, 1].mean()).backward()
    learnable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert learnable and all(n.startswith(("prompts.", "bi_cmci.", "adapter.")) for n in learnable)
    for name, p in model.named_parameters():
        if name.startswith("clip."):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_non_square_images_get_a_score_each_and_a_map_of_their_own_size(model: KAnoCLIP) -> None:
    with torch.inference_mode():
        for h, w in ((70, 130), (150, 60), (112, 112)):
            out = model(torch.rand(3, 3, h, w))
            assert out.scores.shape == (3,) and out.maps.shape == (3, h, w)
            assert ((out.scores >= 0) & (out.scores <= 1)).all()
            assert ((out.maps >= 0) & (out.maps <= 1)).all()


def test_untrained_fusion_and_adapter_are_the_identity(model: KAnoCLIP) -> None:
    torch.manual_seed(0)
    patches = F.normalize(torch.randn(2, 4, 16, 64), dim=-1)
    text = F.normalize(torch.randn(2, 64), dim=-1)
    fused_p, fused_t = model.bi_cmci(patches, text)
    assert torch.allclose(fused_p, patches, atol=1e-6)
    assert torch.allclose(fused_t, text.expand(2, 4, 2, 64), atol=1e-6)
    g = torch.randn(2, 64)
    assert torch.allclose(model.adapter(g, torch.randn(2, 16, 64), (4, 4)), F.normalize(g, dim=-1))


@pytest.mark.parametrize(("nq", "nk", "sets"), [(2, 9, 3), (9, 2, 3), (2, 9, 1), (9, 2, 1), (5, 5, 3)])
def test_level_cross_attention_equals_torch_multihead_attention_per_level(nq: int, nk: int, sets: int) -> None:
    """Both folded forms (few queries: text reads patches; few keys: patches read text), per-level and shared."""
    torch.manual_seed(1)
    dim, heads, levels = 32, 4, 3
    block = LevelCrossAttention(dim, heads, sets)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.2)
    query, context = torch.randn(2, levels, nq, dim), torch.randn(2, levels, nk, dim)
    got = block(query, context)
    for level in range(levels):
        w = level if sets > 1 else 0
        mha = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        with torch.no_grad():
            mha.in_proj_weight.copy_(block.in_weight[w].reshape(3 * dim, dim))
            mha.in_proj_bias.copy_(block.in_bias[w].reshape(3 * dim))
            mha.out_proj.weight.copy_(block.out_weight[w])
            mha.out_proj.bias.copy_(block.out_bias[w])
        ln_q = F.layer_norm(query[:, level], (dim,), block.norm_q[w, 0], block.norm_q[w, 1])
        ln_kv = F.layer_norm(context[:, level], (dim,), block.norm_kv[w, 0], block.norm_kv[w, 1])
        want = query[:, level] + mha(ln_q, ln_kv, ln_kv, need_weights=False)[0]
        assert torch.allclose(got[:, level], want, atol=1e-5), level


def test_shared_bi_cmci_uses_one_weight_set_for_all_levels() -> None:
    shared = BiCMCI(32, 4, levels=4, shared=True)
    separate = BiCMCI(32, 4, levels=4)
    assert sum(p.numel() for p in separate.parameters()) == 4 * sum(p.numel() for p in shared.parameters())


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_gaussian_blur_equals_scipy(sigma: float) -> None:
    maps = torch.rand(2, 57, 83, dtype=torch.float64)
    got = gaussian_blur(maps, sigma).numpy()
    for i in range(2):
        assert np.allclose(got[i], gaussian_filter(maps[i].numpy(), sigma, mode="reflect"), atol=1e-12)


def test_text_tower_with_real_tokens_and_no_deep_prompts_equals_open_clips_encode_text(model: KAnoCLIP) -> None:
    tower = TextTower(model.clip)
    tokens = model.tokenizer(["a photo of a damaged bottle.", "flawless metal"])
    with torch.no_grad():
        ours = tower.encode_embeddings(model.clip.token_embedding(tokens), tokens.argmax(-1))
        theirs = model.clip.encode_text(tokens)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_deep_prompts_overwrite_positions_of_the_middle_layers_only(model: KAnoCLIP) -> None:
    before = model.prompts().detach()
    with torch.no_grad():
        model.prompts.deep_prompts.add_(1.0)
    assert not torch.allclose(model.prompts().detach(), before)
    assert model.prompts.deep_prompts.shape == (8, 4, 64)  # depth 9 -> layers 2..9, length 4


def test_checkpoint_round_trip_gives_identical_outputs(model: KAnoCLIP, tmp_path: Path) -> None:
    randomize_learnable(model)
    kanoclip.save(model, tmp_path / "ckpt")
    loaded = kanoclip.load(tmp_path / "ckpt").eval()
    images = torch.rand(2, 3, 112, 112)
    with torch.inference_mode():
        a, b = model(images), loaded(images)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.maps, b.maps)
    assert loaded.config == model.config


def test_damaged_checkpoints_are_clear_errors(model: KAnoCLIP, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        kanoclip.load(tmp_path / "nothing")
    kanoclip.save(model, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        kanoclip.load(tmp_path / "ckpt")


def test_training_free_mode_uses_knowledge_text(model: KAnoCLIP) -> None:
    normal = model.encode_text(["a flawless object", "an intact surface"])
    abnormal = model.encode_text(["a scratched object", "a cracked surface"])
    model.use_knowledge_text(normal, abnormal)
    want = F.normalize(torch.stack([normal.mean(0), abnormal.mean(0)]), dim=-1)
    assert model.training_free and torch.allclose(model.text_features(), want)
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 112, 112)).scores.shape == (1,)


def test_focal_and_dice_match_their_formulas() -> None:
    torch.manual_seed(2)
    p_abn = torch.rand(2, 5, 5)
    probs = torch.stack([1 - p_abn, p_abn], dim=1)
    gt = (torch.rand(2, 5, 5) > 0.5).float()
    pt = gt * p_abn + (1 - gt) * (1 - p_abn)
    assert torch.allclose(focal_loss(probs, gt, gamma=2), (-((1 - pt) ** 2) * torch.log(pt)).mean())
    dice = [(2 * (p_abn[i] * gt[i]).sum() + 1) / (p_abn[i].sum() + gt[i].sum() + 1) for i in range(2)]
    assert torch.allclose(dice_loss(p_abn, gt), 1 - torch.stack(dice).mean())


def test_kd_loss_is_one_minus_cosine_to_the_knowledge_means_plus_image_ce() -> None:
    torch.manual_seed(3)
    text = F.normalize(torch.randn(2, 8), dim=-1)
    targets = KnowledgeTargets(F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1))
    k_n = F.normalize(targets.normal.mean(0), dim=0)
    k_a = F.normalize(targets.abnormal.mean(0), dim=0)
    want = (1 - text[0] @ k_n) + (1 - text[1] @ k_a)
    assert torch.allclose(kd_loss(text, targets, "cos"), want)
    k_img, labels = F.normalize(torch.randn(3, 8), dim=-1), torch.tensor([0, 1, 1])
    logits = k_img @ text.t() / 0.07
    ce = -torch.log_softmax(logits, -1)[torch.arange(3), labels].mean()
    assert torch.allclose(kd_loss(text, targets, "cos", 0.07, k_img, labels), want + ce)


def test_config_errors_are_specific() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        KAnoCLIPConfig.from_dict({"backbone": "x", "colour": 1})
    with pytest.raises(ConfigError, match="tap_mode"):
        KAnoCLIPConfig(tap_mode="all").validate()
    with pytest.raises(ConfigError, match="tap_layers"):
        tiny_model(tap_layers=(2, 20))
    with pytest.raises(ConfigError, match="prompt_depth"):
        tiny_model(prompt_depth=13)


def test_cli_info_prints_the_resolved_config_and_parameter_counts(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["info", "--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--set", "tap_mode=top"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "tap_layers: [2, 4, 6, 8]" in out and 'tap_mode: "top"' in out
    frozen = int(out.split("frozen (CLIP):")[1].split()[0].replace(",", ""))
    learnable = int(out.split("learnable:")[1].split()[0].replace(",", ""))
    model = tiny_model()
    assert learnable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert frozen == sum(p.numel() for p in model.clip.parameters())


def test_cli_reports_user_errors_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--backbone", "kanoclip-tiny", "--pretrained", "none", "--set", "colour=3"]) == 2
    assert "unknown config field" in capsys.readouterr().err
