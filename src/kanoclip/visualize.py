"""Heatmap overlays for people: a fixed colour scale (0 = blue, 1 = red), so overlays compare across images."""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray
from PIL import Image


def colorize(amap: NDArray[np.floating], vmin: float = 0.0, vmax: float = 1.0) -> NDArray[np.uint8]:
    """A jet colour map of a 2-D map: (H, W) -> (H, W, 3) uint8."""
    x = np.clip((np.asarray(amap, dtype=np.float32) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * x - np.array([3.0, 2.0, 1.0], dtype=np.float32)), 0.0, 1.0)
    return (rgb * 255 + 0.5).astype(np.uint8)


def overlay(
    rgb: NDArray[np.uint8], amap: NDArray[np.floating], alpha: float = 0.5, mask: NDArray[np.bool_] | None = None
) -> NDArray[np.uint8]:
    """The image with its heatmap blended on top (the map is resized to the image); `mask` draws its outline."""
    h, w = rgb.shape[:2]
    if amap.shape != (h, w):
        amap = np.asarray(Image.fromarray(np.asarray(amap, np.float32)).resize((w, h), Image.Resampling.BILINEAR))
    out = (rgb.astype(np.float32) * (1 - alpha) + colorize(amap).astype(np.float32) * alpha).astype(np.uint8)
    if mask is not None and mask.any():
        edge = mask & ~_erode(mask)
        out[edge] = (255, 255, 255)
    return out


def _erode(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    padded = np.pad(mask, 1, constant_values=False)
    return padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def mask_image(mask: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """A binary mask as a black and white RGB image."""
    return np.repeat(mask[..., None], 3, axis=2).astype(np.uint8) * 255


def to_png(rgb: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()
