"""Conv-Adapter: aligns the global visual feature with the text (SPEC §3.4, I9).

    a  = GAP( Conv1×1(D→D/r) → GELU → depthwise Conv3×3 → GELU → Conv1×1(→D, zero-init) )(patch grid)
    g' = normalize(g + ratio · a)

The last convolution starts at zero, so an untrained adapter leaves g unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvAdapter(nn.Module):
    """Bottleneck convolutions over the final patch grid, pooled into a residual on the global feature."""

    def __init__(self, dim: int, reduction: int = 4, ratio: float = 0.2) -> None:
        super().__init__()
        hidden = max(1, dim // reduction)
        self.ratio = ratio
        last = nn.Conv2d(hidden, dim, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)  # type: ignore[arg-type]
        self.body = nn.Sequential(
            nn.Conv2d(dim, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            last,
        )

    def forward(self, global_token: torch.Tensor, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """global_token (B, D), patches (B, N, D) -> adapted global feature (B, D), L2-normalised."""
        z = patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)  # (B, D, h, w)
        a = self.body(z).mean(dim=(2, 3))
        return F.normalize(global_token + self.ratio * a, dim=-1)


class Conv1dAdapter(nn.Module):
    """The cheaper alternative: the bottleneck runs on the global vector as a 1-D signal, with no spatial context."""

    def __init__(self, channels: int = 8, ratio: float = 0.2) -> None:
        super().__init__()
        self.ratio = ratio
        last = nn.Conv1d(channels, 1, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)  # type: ignore[arg-type]
        self.body = nn.Sequential(nn.Conv1d(1, channels, 3, padding=1), nn.GELU(), last)

    def forward(self, global_token: torch.Tensor, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        a = self.body(global_token.unsqueeze(1)).squeeze(1)
        return F.normalize(global_token + self.ratio * a, dim=-1)


def build_adapter(kind: str, dim: int, reduction: int, ratio: float) -> nn.Module:
    return ConvAdapter(dim, reduction, ratio) if kind == "conv2d" else Conv1dAdapter(ratio=ratio)
