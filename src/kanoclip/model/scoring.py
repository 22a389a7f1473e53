"""From features to probabilities, anomaly maps and image scores (SPEC §3.5, I10-I12)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def text_probabilities(features: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(cos(features, [t_n, t_a]) / τ) over {normal, abnormal}.

    features (..., D) and text (2, D) or (..., 2, D) matching the leading axes, both L2-normalised -> (..., 2).
    """
    return (features @ text.transpose(-1, -2) / temperature).softmax(dim=-1)


def level_maps(probs: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Patch probabilities (B, L, N, 2) -> per-level maps (B, L, 2, H, W), bilinear, align_corners=False."""
    b, levels, _, c = probs.shape
    maps = probs.permute(0, 1, 3, 2).reshape(b * levels, c, *grid)
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return maps.reshape(b, levels, c, *size)


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Gaussian filter of (B, H, W) maps, equal to scipy.ndimage.gaussian_filter(mode='reflect') per image."""
    if sigma <= 0:
        return maps
    radius = int(truncate * sigma + 0.5)
    if radius >= min(maps.shape[-2:]):
        raise ValueError(f"map of size {tuple(maps.shape[-2:])} is too small for a Gaussian of sigma {sigma}")
    x = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    out = maps.unsqueeze(1)
    for dim in (-1, -2):  # symmetric ("reflect" in scipy's words) padding, then a 1-D convolution per axis
        head = out.narrow(dim, 0, radius).flip(dim)
        tail = out.narrow(dim, out.shape[dim] - radius, radius).flip(dim)
        padded = torch.cat([head, out, tail], dim=dim)
        weight = kernel.view(1, 1, 1, -1) if dim == -1 else kernel.view(1, 1, -1, 1)
        out = F.conv2d(padded, weight)
    return out.squeeze(1)


def fuse_levels(maps: torch.Tensor, fusion: str) -> torch.Tensor:
    """Abnormal-probability maps (B, L, H, W) -> (B, H, W): mean keeps [0, 1]; sum is AnomalyCLIP's (same ranks)."""
    return maps.mean(dim=1) if fusion == "mean" else maps.sum(dim=1)


def image_scores(global_probs: torch.Tensor, maps: torch.Tensor, mode: str) -> torch.Tensor:
    """The abnormal probability of the global branch, or its mean with the map's maximum (I12)."""
    score = global_probs[:, 1]
    if mode == "global+map":
        score = 0.5 * (score + maps.flatten(1).amax(dim=1).clamp(0, 1))
    return score
