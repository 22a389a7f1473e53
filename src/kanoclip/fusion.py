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
        if query.shape[2] <= context.shape[2]:
            return query + self._few_queries(qn, kvn)
        return query + self._few_keys(qn, kvn)

    def _heads(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Projection `index` (0 q, 1 k, 2 v) split by head: weight (1, S, H, dh, D_in), bias (1, S, H, 1, dh)."""
        sets, _, d, _ = self.in_weight.shape
        h = self.heads
        weight = self.in_weight[:, index].reshape(1, sets, h, d // h, d)
        return weight, self.in_bias[:, index].reshape(1, sets, h, 1, d // h)

    def _project(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """(B, L, T, D) -> per-head projections (B, L, H, T, dh); only ever applied to the few text tokens."""
        weight, bias = self._heads(index)
        return x[:, :, None] @ weight.transpose(-1, -2) + bias

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        """Per-head outputs (B, L, H, T, dh) -> output projection (B, L, T, D)."""
        b, levels, h, t, dh = o.shape
        merged = o.transpose(2, 3).reshape(b, levels, t, h * dh)
        return merged @ self.out_weight.transpose(-1, -2)[None] + self.out_bias[None, :, None, :]

    def _few_queries(self, qn: torch.Tensor, kvn: torch.Tensor) -> torch.Tensor:
        """Text reads patches. q·(W_k p + b_k) = (W_kᵀ q)·p + const (the constant cancels in the softmax);
        Σ a (W_v p + b_v) = W_v (Σ a p) + b_v, since attention weights sum to one."""
        b, levels, nq, d = qn.shape
        h = self.heads
        q = self._project(qn, 0)  # (B, L, H, Q, dh)
        wk, _ = self._heads(1)
        q_in = (q @ wk).reshape(b, levels, h * nq, d)  # queries mapped back to input space: (B, L, H·Q, D)
        attn = (q_in @ kvn.transpose(-1, -2) / math.sqrt(d // h)).softmax(-1)  # (B, L, H·Q, N)
        pooled = (attn @ kvn).reshape(b, levels, h, nq, d)  # Σ a p per head
        wv, bv = self._heads(2)
        return self._out(pooled @ wv.transpose(-1, -2) + bv)

    def _few_keys(self, qn: torch.Tensor, kvn: torch.Tensor) -> torch.Tensor:
        """Patches read text. (W_q p + b_q)·k = p·(W_qᵀ k) + b_q·k; W_o Σ_h a_h v_h = Σ_h a_h (W_o,h v_h)."""
        b, levels, nq, d = qn.shape
        nk, h = kvn.shape[2], self.heads
        k, v = self._project(kvn, 1), self._project(kvn, 2)  # (B, L, H, T, dh)
        wq, bq = self._heads(0)
        keys_in = (wq.transpose(-1, -2) @ k.transpose(-1, -2)).permute(0, 1, 3, 2, 4).reshape(b, levels, d, h * nk)
        key_bias = (bq @ k.transpose(-1, -2)).reshape(b, levels, 1, h * nk)
        scores = (qn @ keys_in + key_bias) / math.sqrt(d // h)  # (B, L, N, H·T)
        attn = scores.reshape(b, levels, nq, h, nk).softmax(-1).reshape(b, levels, nq, h * nk)
        sets = self.out_weight.shape[0]
        wo = self.out_weight.reshape(sets, d, h, d // h).permute(0, 2, 3, 1)[None]  # (1, S, H, dh, D)
        values_out = (v @ wo).reshape(b, levels, h * nk, d)  # each head's values through its slice of W_o
        return attn @ values_out + self.out_bias[None, :, None, :]

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
