"""CLIP-VV against explicit formulas written here, and the original path against open_clip's own forward."""

from __future__ import annotations

import math

import torch

from kanoclip.model.clip_vv import dual_block, encode_image, vv_attention
from kanoclip.model.kanoclip import KAnoCLIP


def explicit_layer_norm(ln: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def explicit_attention(block: torch.nn.Module, x: torch.Tensor, vv: bool) -> torch.Tensor:
    """softmax(q kᵀ/√d) v or softmax(v vᵀ/√d) v per head, from the block's own weights, one head at a time."""
    attn = block.attn
    width = x.shape[-1]
    heads = attn.num_heads
    d = width // heads
    h = explicit_layer_norm(block.ln_1, x)
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q = h @ w[:width].T + b[:width]
    k = h @ w[width : 2 * width].T + b[width : 2 * width]
    v = h @ w[2 * width :].T + b[2 * width :]
    if vv:
        q, k = v, v
    outs = []
    for i in range(heads):
        s = slice(i * d, (i + 1) * d)
        scores = q[..., s] @ k[..., s].transpose(-1, -2) / math.sqrt(d)
        outs.append(torch.softmax(scores, dim=-1) @ v[..., s])
    return torch.cat(outs, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias


def test_vv_attention_equals_explicit_softmax_vvt_v_in_every_block(model24: KAnoCLIP) -> None:
    blocks = model24.clip.visual.transformer.resblocks
    torch.manual_seed(3)
    for block in blocks:
        x = torch.randn(2, 50, 64)
        got = vv_attention(block, x)
        want = explicit_attention(block, x, vv=True)
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()


def test_dual_path_taps_equal_an_explicit_layer_by_layer_reference(model24: KAnoCLIP) -> None:
    """The whole V-V path (layers 6..24, no FFN on it, fed by the original path) against a slow reference."""
    visual = model24.clip.visual.double()
    assert model24.config.vv_start_layer == 6 and model24.config.tap_layers == (6, 12, 18, 24)
    torch.manual_seed(4)
    images = torch.randn(2, 3, 98, 98, dtype=torch.float64)
    feats = encode_image(visual, images, 6, (6, 12, 18, 24))

    x = visual._embeds(images)
    blocks = visual.transformer.resblocks
    for block in blocks[:5]:
        x = x + explicit_attention(block, x, vv=False)
        x = x + block.mlp(explicit_layer_norm(block.ln_2, x))
    x_ori, x_vv, taps = x, x.clone(), {}
    for layer in range(6, 25):
        block = blocks[layer - 1]
        x_vv = x_vv + explicit_attention(block, x_ori, vv=True)
        x_ori = x_ori + explicit_attention(block, x_ori, vv=False)
        x_ori = x_ori + block.mlp(explicit_layer_norm(block.ln_2, x_ori))
        taps[layer] = x_vv.clone()
    for level, layer in enumerate((6, 12, 18, 24)):
        want = explicit_layer_norm(visual.ln_post, taps[layer][:, 1:]) @ visual.proj
        assert torch.allclose(feats.taps[:, level], want, atol=1e-10), layer
    want_global = explicit_layer_norm(visual.ln_post, x_ori[:, 0]) @ visual.proj
    assert torch.allclose(feats.global_token, want_global, atol=1e-10)


def test_original_path_equals_open_clips_own_forward(model24: KAnoCLIP) -> None:
    torch.manual_seed(5)
    images = torch.randn(3, 3, 98, 98)
    feats = encode_image(model24.clip.visual, images, 6, (6, 12, 18, 24))
    with torch.no_grad():
        reference = model24.clip.encode_image(images)
    assert torch.allclose(feats.global_token, reference, atol=1e-5, rtol=0)


def test_the_four_taps_differ_from_each_other(model24: KAnoCLIP) -> None:
    torch.manual_seed(6)
    feats = encode_image(model24.clip.visual, torch.randn(2, 3, 98, 98), 6, (6, 12, 18, 24))
    for i in range(4):
        for j in range(i + 1, 4):
            assert (feats.taps[:, i] - feats.taps[:, j]).abs().max() > 1e-3, (i, j)


def test_top_tap_mode_repeats_the_last_layer_like_anomalyclip(model24: KAnoCLIP) -> None:
    images = torch.randn(1, 3, 98, 98)
    distinct = encode_image(model24.clip.visual, images, 6, (6, 12, 18, 24))
    top = encode_image(model24.clip.visual, images, 6, (6, 12, 18, 24), tap_mode="top")
    for level in range(4):
        assert torch.equal(top.taps[:, level], distinct.taps[:, 3])


def test_dual_block_leaves_its_inputs_untouched(model24: KAnoCLIP) -> None:
    block = model24.clip.visual.transformer.resblocks[10]
    x_ori, x_vv = torch.randn(1, 10, 64), torch.randn(1, 10, 64)
    before = (x_ori.clone(), x_vv.clone())
    dual_block(block, x_ori, x_vv)
    assert torch.equal(x_ori, before[0]) and torch.equal(x_vv, before[1])


def test_global_ln_post_flag_reproduces_anomalyclips_quirk(model24: KAnoCLIP) -> None:
    visual = model24.clip.visual
    images = torch.randn(1, 3, 98, 98)
    quirk = encode_image(visual, images, 6, (24,), global_ln_post=False)
    x = visual._embeds(images)
    for block in visual.transformer.resblocks:
        x = block(x)
    assert torch.allclose(quirk.global_token, x[:, 0] @ visual.proj, atol=1e-5)
