"""CLIP-VV: the frozen vision tower with a second, V-V attention path (SPEC §3.1, I2-I4).

From `vv_start_layer` on, every block runs two attentions on the same `ln_1(x_ori)` tokens and the same in-projection:
the original softmax(q kᵀ/√d) v, which feeds the FFN and the next block, and softmax(v vᵀ/√d) v, which is only
accumulated on the V-V path (no FFN). Taps read the V-V path; the global feature is the original path's CLS token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer


@dataclass
class VisualFeatures:
    """What the rest of the model reads from the image. D is the joint embedding width."""

    global_token: torch.Tensor  # (B, D): original-path CLS after ln_post (unless disabled) and proj
    patch_tokens: torch.Tensor  # (B, N, D): original-path patch tokens after ln_post and proj
    taps: torch.Tensor  # (B, L, N, D): V-V path at each tap layer, ln_post and proj, CLS removed
    grid: tuple[int, int]


def _qkv(block: ResidualAttentionBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of a block's attention on ln_1(x), each (B, heads, N, head_dim), from one in-projection."""
    attn = block.attn
    b, n, c = x.shape
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.view(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def _merge_heads(block: ResidualAttentionBlock, o: torch.Tensor) -> torch.Tensor:
    b, h, n, d = o.shape
    return block.attn.out_proj(o.transpose(1, 2).reshape(b, n, h * d))


def vv_attention(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The V-V attention of one block on tokens x: out_proj(softmax(v vᵀ/√d) v), v from the block's own weights."""
    _, _, v = _qkv(block, x)
    return _merge_heads(block, F.scaled_dot_product_attention(v, v, v))


def dual_block(
    block: ResidualAttentionBlock, x_ori: torch.Tensor, x_vv: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One CLIP-VV block: both attentions from a single qkv projection of the original path."""
    q, k, v = _qkv(block, x_ori)
    o_ori = _merge_heads(block, F.scaled_dot_product_attention(q, k, v))
    o_vv = _merge_heads(block, F.scaled_dot_product_attention(v, v, v))
    x_ori = x_ori + block.ls_1(o_ori)
    x_ori = x_ori + block.ls_2(block.mlp(block.ln_2(x_ori)))
    return x_ori, x_vv + block.ls_1(o_vv)


def encode_image(
    visual: VisionTransformer,
    images: torch.Tensor,
    vv_start_layer: int,
    tap_layers: tuple[int, ...],
    tap_mode: str = "distinct",
    global_ln_post: bool = True,
) -> VisualFeatures:
    """Run a frozen open_clip vision tower with the V-V path from `vv_start_layer` (1-based) and read the taps.

    images: (B, 3, H, W), normalised, H and W multiples of the patch size.
    """
    grid = (images.shape[-2] // visual.patch_size[0], images.shape[-1] // visual.patch_size[1])
    x = visual._embeds(images)  # (B, 1 + N, width)
    blocks = visual.transformer.resblocks
    for block in blocks[: vv_start_layer - 1]:
        x = block(x)
    x_ori, x_vv = x, x
    taps: list[torch.Tensor] = []
    for layer in range(vv_start_layer, len(blocks) + 1):
        x_ori, x_vv = dual_block(blocks[layer - 1], x_ori, x_vv)
        if layer in tap_layers:
            taps.append(x_vv)  # a new tensor each layer: the taps never alias each other
    if tap_mode == "top":
        taps = [taps[-1]] * len(taps)
    tapped = visual.ln_post(torch.stack(taps, dim=1)[:, :, 1:]) @ visual.proj  # (B, L, N, D)
    final = visual.ln_post(x_ori) @ visual.proj  # (B, 1 + N, D)
    global_token = final[:, 0] if global_ln_post else x_ori[:, 0] @ visual.proj
    return VisualFeatures(global_token, final[:, 1:], tapped, grid)
