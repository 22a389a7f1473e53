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
        """query (B, L, Q, D), context (B, L, K, D) -> query + attention output, (B, L, Q, D).

        One side is always the two text tokens, so the projections of the many patch tokens are folded into the
        few text vectors (exact algebra, no approximation): the patch side costs O(H·N·D), not O(N·D²).
        """
        qn = self._norm(query, self.norm_q)
        kvn = self._norm(context, self.norm_kv)
        levels = query.shape[1]
        if query.shape[2] <= context.shape[2]:
            return query + self._few_queries(qn, kvn, levels)
        return query + self._few_keys(qn, kvn, levels)

    def _weights(self, levels: int) -> tuple[torch.Tensor, ...]:
        """Per level and head: W_q, W_k, W_v (L, H, dh, D), their biases (L, H, dh), W_o (L, D, H, dh), b_o (L, D).
        A shared set is expanded as a view, never copied per image."""
        d = self.in_weight.shape[-1]
        h = self.heads
        w = self.in_weight.expand(levels, 3, d, d).reshape(levels, 3, h, d // h, d)
        b = self.in_bias.expand(levels, 3, d).reshape(levels, 3, h, d // h)
        wo = self.out_weight.expand(levels, d, d).reshape(levels, d, h, d // h)
        return w[:, 0], w[:, 1], w[:, 2], b[:, 0], b[:, 1], b[:, 2], wo, self.out_bias.expand(levels, d)

    def _few_queries(self, qn: torch.Tensor, kvn: torch.Tensor, levels: int) -> torch.Tensor:
        """Text reads patches. q·(W_k p + b_k) = (W_kᵀ q)·p + const (the constant cancels in the softmax);
        Σ a (W_v p + b_v) = W_v (Σ a p) + b_v, since attention weights sum to one."""
        wq, wk, wv, bq, _, bv, wo, bo = self._weights(levels)
        scale = 1 / math.sqrt(wq.shape[2])
        q = torch.einsum("blqd,lhed->blhqe", qn, wq) + bq[None, :, :, None]
        q_in = torch.einsum("blhqe,lhed->blhqd", q, wk)  # queries mapped back to input space
        attn = (torch.einsum("blhqd,blnd->blhqn", q_in, kvn) * scale).softmax(-1)
        pooled = torch.einsum("blhqn,blnd->blhqd", attn, kvn)  # Σ a p per head
        o = torch.einsum("blhqd,lhed->blhqe", pooled, wv) + bv[None, :, :, None]
        return torch.einsum("blhqe,lohe->blqo", o, wo) + bo[None, :, None]

    def _few_keys(self, qn: torch.Tensor, kvn: torch.Tensor, levels: int) -> torch.Tensor:
        """Patches read text. (W_q p + b_q)·k = p·(W_qᵀ k) + b_q·k; W_o Σ_h a_h v_h = Σ_h a_h (W_o,h v_h)."""
        wq, wk, wv, bq, bk, bv, wo, bo = self._weights(levels)
        scale = 1 / math.sqrt(wq.shape[2])
        k = torch.einsum("bltd,lhed->blhte", kvn, wk) + bk[None, :, :, None]
        v = torch.einsum("bltd,lhed->blhte", kvn, wv) + bv[None, :, :, None]
        keys_in = torch.einsum("blhte,lhed->blhtd", k, wq)  # keys mapped back to input space
        key_bias = torch.einsum("blhte,lhe->blht", k, bq)
        scores = torch.einsum("blnd,blhtd->blnht", qn, keys_in) + key_bias[:, :, None]
        attn = (scores * scale).softmax(-1)
        values_out = torch.einsum("blhte,lohe->blhto", v, wo)  # each head's values through its slice of W_o
        return torch.einsum("blnht,blhto->blno", attn, values_out) + bo[None, :, None]

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
