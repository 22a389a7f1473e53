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
from kanoclip.errors import CheckpointError, ConfigError
from kanoclip.knowledge import KnowledgeBase, training_free_text
from kanoclip.knowledge.ensemble import ensemble_sentences
from kanoclip.model.fusion import BiCMCI, LevelCrossAttention
from kanoclip.model.losses import KnowledgeTargets, dice_loss, focal_loss, kd_loss
from kanoclip.model.prompts import TextTower
from kanoclip.model.scoring import gaussian_blur
from tests.conftest import randomize_learnable, tiny_model


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
            assert out.pred_score.shape == (3,) and out.anomaly_map.shape == (3, h, w)
            assert ((out.pred_score >= 0) & (out.pred_score <= 1)).all()
            assert ((out.anomaly_map >= 0) & (out.anomaly_map <= 1)).all()


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
    loaded = kanoclip.load(tmp_path / "ckpt")
    assert not loaded.training  # load() returns an eval-mode model
    images = torch.rand(2, 3, 112, 112)
    with torch.inference_mode():
        a, b = model(images), loaded(images)
    assert torch.equal(a.pred_score, b.pred_score) and torch.equal(a.anomaly_map, b.anomaly_map)
    assert loaded.config == model.config


def test_damaged_checkpoints_are_clear_errors(model: KAnoCLIP, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        kanoclip.load(tmp_path / "nothing")
    kanoclip.save(model, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        kanoclip.load(tmp_path / "ckpt")


def rebuild(model: KAnoCLIP, images: torch.Tensor, levels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The model's wiring written out from scratch (SPEC §3.5): normalise with CLIP's mean/std, resize bicubic to the
    run size, CLIP-VV features, L2-normalised taps into Bi-CMCI, softmax(cos/τ) per patch, the ABNORMAL channel,
    bilinear to the run size, fuse the chosen levels (mean or sum), THEN blur (scipy), resize to the input size;
    image score = the global abnormal probability, or its mean with the map's maximum."""
    cfg = model.config
    size = cfg.image_size
    mean = torch.tensor(model.clip.visual.preprocess_cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
    std = torch.tensor(model.clip.visual.preprocess_cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
    x = (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    with torch.no_grad():
        feats = model.encode_image(x)
        text = model.text_features()
        g = model.adapter(feats.global_token, feats.patch_tokens, feats.grid)
        patches, text_fused = model.bi_cmci(F.normalize(feats.taps, dim=-1), text)
    global_abnormal = torch.softmax(g @ text.t() / cfg.temperature, dim=-1)[:, 1].numpy()
    scores, maps = [], []
    for b in range(images.shape[0]):
        level_maps = []
        for level in levels:
            logits = patches[b, level] @ text_fused[b, level].t() / cfg.temperature  # (N, 2)
            abnormal = torch.softmax(logits, dim=-1)[:, 1].reshape(1, 1, *feats.grid)
            level_maps.append(F.interpolate(abnormal, size=(size, size), mode="bilinear", align_corners=False)[0, 0])
        stacked = torch.stack(level_maps).numpy().astype(np.float64)
        fused = stacked.mean(0) if cfg.level_fusion == "mean" else stacked.sum(0)
        blurred = gaussian_filter(fused, cfg.map_sigma, mode="reflect")
        score = global_abnormal[b]
        if cfg.score_mode == "global+map":
            score = 0.5 * (score + min(1.0, blurred.max()))
        resized = F.interpolate(
            torch.from_numpy(blurred)[None, None].float(), size=images.shape[-2:], mode="bilinear", align_corners=False
        )[0, 0]
        scores.append(score)
        maps.append(resized.numpy())
    return np.array(scores), np.stack(maps)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"level_fusion": "sum"},
        {"score_mode": "global+map"},
        {"adapter": "conv1d"},
        {"bi_cmci_shared": True},
        {"tap_mode": "top"},
    ],
)
def test_the_models_wiring_equals_a_from_scratch_rebuild(changes: dict[str, object]) -> None:
    model = tiny_model(**changes)
    randomize_learnable(model)
    images = torch.rand(2, 3, 90, 130)
    with torch.inference_mode():
        out = model(images)
    scores, maps = rebuild(model, images, list(range(len(model.config.tap_layers or ()))))
    assert np.allclose(out.pred_score.numpy(), scores, atol=1e-5)
    assert np.abs(out.anomaly_map.numpy() - maps).max() < 1e-4


def test_training_free_maps_fuse_only_the_deep_taps_and_the_field_changes_them() -> None:
    model = tiny_model()
    assert model.config.tap_layers == (2, 4, 6, 8) and model.config.training_free_taps == (6, 8)  # >= 3/4 depth
    text = F.normalize(torch.randn(2, 64, generator=torch.Generator().manual_seed(5)), dim=-1)
    model.setup(text=text)
    images = torch.rand(1, 3, 112, 112)
    with torch.inference_mode():
        deep = model(images)
    assert np.abs(deep.anomaly_map.numpy() - rebuild(model, images, [2, 3])[1]).max() < 1e-4
    last_only = tiny_model(training_free_taps=(8,))
    last_only.setup(text=text)
    with torch.inference_mode():
        last = last_only(images)
    assert np.abs(last.anomaly_map.numpy() - rebuild(last_only, images, [3])[1]).max() < 1e-4
    assert not torch.allclose(last.anomaly_map, deep.anomaly_map)
    with pytest.raises(ConfigError, match="training_free_taps"):
        tiny_model(training_free_taps=(5,))


@pytest.mark.parametrize("source", ["knowledge", "ensemble", "knowledge+ensemble"])
def test_training_free_text_follows_the_class_and_the_chosen_source(source: str) -> None:
    model = tiny_model(training_free_text=source)
    kb = KnowledgeBase.load()

    def unit_means(normal: list[str], abnormal: list[str]) -> torch.Tensor:
        return torch.stack(
            [F.normalize(F.normalize(model.encode_text(s), dim=-1).mean(0), dim=0) for s in (normal, abnormal)]
        )

    parts = []
    if "knowledge" in source:
        parts.append(unit_means(kb.classes["bottle"].normal, kb.classes["bottle"].abnormal))
    if "ensemble" in source:
        parts.append(unit_means(*ensemble_sentences("bottle")))
    want = F.normalize(torch.stack(parts).mean(0), dim=-1)
    text, record = training_free_text(model, "bottle")
    assert torch.allclose(text, want, atol=1e-6)
    assert record["source"] == source and record["class"] == "bottle"
    assert not torch.allclose(training_free_text(model, "screw")[0], text)  # the class matters


def test_the_ensemble_puts_every_state_in_every_template() -> None:
    normal, abnormal = ensemble_sentences("metal_nut")
    assert "a photo of a flawless metal nut." in normal and "a photo of a damaged metal nut." in abnormal
    assert len(set(normal)) == len(normal) > 50 and len(set(abnormal)) == len(abnormal) > 50
    assert all("metal nut" in s for s in normal + abnormal)


def test_deep_prompts_replace_exactly_positions_1_to_4_of_text_layers_2_to_9(model: KAnoCLIP) -> None:
    blocks = model.prompts.tower.owner.transformer.resblocks
    seen: dict[int, torch.Tensor] = {}
    handles = [
        b.register_forward_pre_hook(lambda _m, args, i=i: seen.__setitem__(i, args[0].detach().clone()))
        for i, b in enumerate(blocks)
    ]
    try:
        with torch.no_grad():
            model.prompts()
            first = dict(seen)
            model.prompts.deep_prompts.add_(torch.randn_like(model.prompts.deep_prompts))
            model.prompts()
    finally:
        for h in handles:
            h.remove()
    deep = model.prompts.deep_prompts.detach()
    assert torch.equal(seen[0], first[0])  # layer 1's input is untouched
    for i in range(1, 9):  # inputs of layers 2..9 (0-based 1..8)
        assert torch.equal(seen[i][:, 1:5], deep[i - 1].expand(2, -1, -1))
        assert not torch.equal(seen[i][:, 1:5], first[i][:, 1:5])
    assert torch.equal(seen[1][:, :1], first[1][:, :1]) and torch.equal(seen[1][:, 5:], first[1][:, 5:])
    assert not torch.equal(seen[9][:, 1:5], deep[-1].expand(2, -1, -1))  # layer 10 gets layer 9's output


def test_bi_cmci_patches_read_the_updated_text_and_both_outputs_are_unit_vectors() -> None:
    torch.manual_seed(4)
    fusion = BiCMCI(16, 2, 3)
    randomize_learnable_module(fusion)
    patches, text = F.normalize(torch.randn(2, 3, 10, 16), dim=-1), F.normalize(torch.randn(2, 16), dim=-1)
    keys_seen: list[torch.Tensor] = []
    original = fusion.image_from_text.forward

    def spy(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        keys_seen.append(keys.detach().clone())
        return original(query, keys)

    fusion.image_from_text.forward = spy  # type: ignore[method-assign]
    with torch.no_grad():
        fused_patches, fused_text = fusion(patches, text)
        updated_text = fusion.text_from_image(text.expand(2, 3, 2, 16), patches)
    assert torch.allclose(keys_seen[0], updated_text)  # not the text before the update
    assert not torch.allclose(updated_text, text.expand(2, 3, 2, 16))
    assert torch.allclose(fused_patches.norm(dim=-1), torch.ones(2, 3, 10), atol=1e-5)
    assert torch.allclose(fused_text.norm(dim=-1), torch.ones(2, 3, 2), atol=1e-5)


def randomize_learnable_module(module: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


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
    l2 = ((text[0] - k_n) ** 2).sum() + ((text[1] - k_a) ** 2).sum()
    assert torch.allclose(kd_loss(text, targets, "l2"), l2)
    sentences = torch.cat([targets.normal, targets.abnormal])
    y = [0] * 5 + [1] * 4
    nll = -torch.log_softmax(sentences @ text.t() / 0.07, -1)[torch.arange(9), y].mean()
    assert torch.allclose(kd_loss(text, targets, "contrastive"), nll)
    assert torch.allclose(kd_loss(text, targets, "cos+contrastive"), want + nll)


def test_config_errors_are_specific() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        KAnoCLIPConfig.from_dict({"backbone": "x", "colour": 1})
    with pytest.raises(ConfigError, match="tap_mode"):
        KAnoCLIPConfig(tap_mode="all").validate()
    with pytest.raises(ConfigError, match="tap_layers"):
        tiny_model(tap_layers=(2, 20))
    with pytest.raises(ConfigError, match="prompt_depth"):
        tiny_model(prompt_depth=13)
