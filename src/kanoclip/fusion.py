"""Bi-CMCI: bi-directional cross-attention between text and patch features at every tap level (SPEC §3.3, I8).

    text ← image:  T'_l = T   + W_o^t · MHA(q = LN(T),   k = v = LN(P_l))
    image ← text:  P'_l = P_l + W_o^v · MHA(q = LN(P_l), k = v = LN(T'_l))

Each level has its own weights, stored stacked along a leading level axis so that all levels run in one batched
call (no Python loop over levels). Output projections start at zero: at step 0, P' = P and T' = T.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LevelCrossAttention(nn.Module):
    """Pre-LN multi-head cross-attention with a residual, one weight set per level (or one shared by all)."""

    def __init__(self, dim: int, heads: int, sets: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"Bi-CMCI width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm_q = nn.Parameter(torch.stack([torch.ones(sets, dim), torch.zeros(sets, dim)], dim=1))
        self.norm_kv = nn.Parameter(torch.stack([torch.ones(sets, dim), torch.zeros(sets, dim)], dim=1))
        bound = math.sqrt(6 / (dim + 3 * dim))  # xavier-uniform over the packed in-projection, as nn.MultiheadAttention
        self.in_weight = nn.Parameter(torch.empty(sets, 3, dim, dim).uniform_(-bound, bound))
        self.in_bias = nn.Parameter(torch.zeros(sets, 3, dim))
        self.out_weight = nn.Parameter(torch.zeros(sets, dim, dim))
        self.out_bias = nn.Parameter(torch.zeros(sets, dim))

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """query (B, L, Q, D), context (B, L, K, D) -> query + attention output, (B, L, Q, D)."""
        b, levels, nq, d = query.shape
        nk = context.shape[2]
        h = self.heads
        qn = self._norm(query, self.norm_q)
        kvn = self._norm(context, self.norm_kv)
        w = self.in_weight.transpose(-1, -2)  # (S, 3, D_in, D_out)
        bias = self.in_bias[:, :, None, :]  # (S, 3, 1, D)
        q = qn @ w[:, 0] + bias[:, 0]
        k = kvn @ w[:, 1] + bias[:, 1]
        v = kvn @ w[:, 2] + bias[:, 2]
        q = q.reshape(b * levels, nq, h, d // h).transpose(1, 2)
        k = k.reshape(b * levels, nk, h, d // h).transpose(1, 2)
        v = v.reshape(b * levels, nk, h, d // h).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, levels, nq, d)
        return query + o @ self.out_weight.transpose(-1, -2) + self.out_bias[:, None, :]

    @staticmethod
    def _norm(x: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
        # affine: (S, 2, D) -> per-level LayerNorm weight and bias, broadcast over batch and tokens.
        return F.layer_norm(x, x.shape[-1:]) * affine[:, 0, None, :] + affine[:, 1, None, :]


class BiCMCI(nn.Module):
    """Text reads the image, then the image reads the updated text; one block per tap level."""

    def __init__(self, dim: int, heads: int, levels: int, shared: bool = False) -> None:
        super().__init__()
        sets = 1 if shared else levels
        self.text_from_image = LevelCrossAttention(dim, heads, sets)
        self.image_from_text = LevelCrossAttention(dim, heads, sets)

    def forward(self, patches: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """patches (B, L, N, D) and text (2, D), both L2-normalised -> fused (B, L, N, D) and (B, L, 2, D),
        re-normalised."""
        b, levels = patches.shape[:2]
        text_tokens = text.to(patches.dtype).expand(b, levels, *text.shape)
        text_fused = self.text_from_image(text_tokens, patches)
        patches_fused = self.image_from_text(patches, text_fused)
        return F.normalize(patches_fused, dim=-1), F.normalize(text_fused, dim=-1)
