"""KnPL learnable prompts through the frozen text tower (SPEC §3.2.2, I5).

Two class-agnostic prompts, `[V1..V12] object.` (normal) and `[W1..W12] damaged object.` (abnormal): their context
tokens are learned; deep text prompts (shared by both) overwrite token positions 1..4 at the input of text layers
2..depth. The text tower itself stays frozen; gradients flow through it to the prompt vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kanoclip.errors import BackboneError
from kanoclip.model.config import KAnoCLIPConfig


class TextTower:
    """The parts of an open_clip text tower, whether the model keeps them at the top level or under `.text`.

    Attributes are read from the owning module at call time, so buffers moved by `.to(device)` are never stale.
    """

    def __init__(self, clip: nn.Module) -> None:
        owner = getattr(clip, "text", clip)
        pool = getattr(owner, "pool_type", getattr(clip, "text_pool_type", "argmax"))
        if getattr(owner, "cls_emb", None) is not None or pool != "argmax":
            raise BackboneError("kanoclip's prompt learner needs a CLIP text tower pooled at the EOT token")
        self.owner: Any = owner

    @property
    def width(self) -> int:
        return int(self.owner.token_embedding.embedding_dim)

    def encode_embeddings(
        self, x: torch.Tensor, eot: torch.Tensor, deep_prompts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run token embeddings (B, 77, W) through the tower; deep_prompts (depth-1, P, W) overwrite positions 1..P
        before layers 2..depth. Returns the projected EOT features (B, D), not normalised."""
        owner = self.owner
        x = x + owner.positional_embedding.to(x.dtype)
        for i, block in enumerate(owner.transformer.resblocks):
            if deep_prompts is not None and 1 <= i <= deep_prompts.shape[0]:
                prompt = deep_prompts[i - 1].unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], prompt, x[:, 1 + prompt.shape[1] :]], dim=1)
            x = block(x, attn_mask=owner.attn_mask)
        x = owner.ln_final(x)[torch.arange(x.shape[0], device=x.device), eot]
        projection = owner.text_projection
        if isinstance(projection, nn.Linear):
            return projection(x)
        return x if projection is None else x @ projection


class PromptLearner(nn.Module):
    """Learnable normal / abnormal prompts (LNP / LAP) and deep text prompts."""

    tokens: torch.Tensor
    token_embeddings: torch.Tensor

    def __init__(self, clip: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], config: KAnoCLIPConfig) -> None:
        super().__init__()
        self.tower = TextTower(clip)
        width = self.tower.width
        placeholder = " ".join(["X"] * config.n_ctx)
        abnormal = f"{config.abnormal_word} {config.class_word}".strip()
        tokens = tokenizer([f"{placeholder} {config.class_word}.", f"{placeholder} {abnormal}."])
        self.n_ctx = config.n_ctx
        self.register_buffer("tokens", tokens, persistent=False)
        with torch.no_grad():
            self.register_buffer("token_embeddings", self.tower.owner.token_embedding(tokens), persistent=False)
        self.ctx_normal = nn.Parameter(torch.randn(config.n_ctx, width) * 0.02)
        self.ctx_abnormal = nn.Parameter(torch.randn(config.n_ctx, width) * 0.02)
        self.deep_prompts = nn.Parameter(torch.randn(config.prompt_depth - 1, config.deep_prompt_length, width) * 0.02)

    def forward(self) -> torch.Tensor:
        """The two prompt features [t_n, t_a], L2-normalised: (2, D)."""
        emb: torch.Tensor = self.token_embeddings  # (2, 77, W)
        ctx = torch.stack([self.ctx_normal, self.ctx_abnormal]).to(emb.dtype)
        x = torch.cat([emb[:, :1], ctx, emb[:, 1 + self.n_ctx :]], dim=1)
        eot = self.tokens.argmax(dim=-1)
        return F.normalize(self.tower.encode_embeddings(x, eot, self.deep_prompts), dim=-1)
