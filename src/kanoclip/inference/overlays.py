"""Heatmap overlays for people, on a colour scale that means the same on every image of a run.

CLIP similarity maps sit in a narrow band (0.45..0.55 is common), so a fixed 0..1 scale paints every overlay one
flat colour, and a per-image scale makes good parts look defective. The scale is therefore one of (`--overlay-scale`):

- `threshold`: centred on the pixel threshold (as anomalib normalises with its threshold), half-width the larger
  distance from it to the run's robust spread: above the middle colour means above the threshold;
- `run`: the run's robust spread, the 1st and 99th percentiles of the first batch's maps, then fixed for the run;
- `fixed`: 0..1, comparable across runs and models;
- `auto` (default): `threshold` with a pixel threshold, else `run`.

The chosen scale is recorded (`run.json`, answers) and every overlay carries a colour bar that names its ends.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from kanoclip.errors import ConfigError
from kanoclip.model.config import OVERLAY_SCALES

SPREAD_PERCENTILES = (1.0, 99.0)
MIN_WIDTH = 1e-6  # a constant map still gets a scale


@dataclass(frozen=True)
class OverlayScale:
    """The map values at the colour map's two ends, how they were chosen, and the pixel threshold shown on the bar."""

    mode: str  # fixed | run | threshold
    vmin: float
    vmax: float
    threshold: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def spread(maps: NDArray[np.floating]) -> tuple[float, float]:
    """Robust ends of a batch of maps (any shape): their 1st and 99th percentiles."""
    values = np.asarray(maps, dtype=np.float32).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, SPREAD_PERCENTILES)
    return float(lo), float(hi)


def check_scale(mode: str, threshold: float | None) -> None:
    """Refuse a scale that cannot apply, before any work."""
    if mode not in OVERLAY_SCALES:
        raise ConfigError(f"--overlay-scale must be one of {', '.join(OVERLAY_SCALES)}, got {mode!r}")
    if mode == "threshold" and threshold is None:
        raise ConfigError(
            "--overlay-scale threshold needs a pixel threshold: calibrate first (kanoclip calibrate), or use "
            "--overlay-scale run"
        )


def choose_scale(mode: str, run_spread: tuple[float, float] | None, threshold: float | None) -> OverlayScale:
    """The scale for `mode` from the run's spread and the pixel threshold (see the module doc); `threshold` mode
    without a threshold (one removed since start-up) falls back to `run`."""
    if mode == "auto" or (mode == "threshold" and threshold is None):
        mode = "threshold" if threshold is not None else "run"
    if mode == "fixed" or run_spread is None:
        return OverlayScale("fixed" if mode == "fixed" else mode, 0.0, 1.0, threshold)
    lo, hi = run_spread
    if mode == "threshold":
        assert threshold is not None
        half = max(hi - threshold, threshold - lo, MIN_WIDTH)
        return OverlayScale(mode, threshold - half, threshold + half, threshold)
    return OverlayScale(mode, lo, max(hi, lo + MIN_WIDTH), threshold)


def colorize(amap: NDArray[np.floating], vmin: float = 0.0, vmax: float = 1.0) -> NDArray[np.uint8]:
    """A jet colour map of a 2-D map: (H, W) -> (H, W, 3) uint8; `vmin` is blue, `vmax` red."""
    x = np.clip((np.asarray(amap, dtype=np.float32) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * x - np.array([3.0, 2.0, 1.0], dtype=np.float32)), 0.0, 1.0)
    return (rgb * 255 + 0.5).astype(np.uint8)


def overlay(
    rgb: NDArray[np.uint8],
    amap: NDArray[np.floating],
    scale: OverlayScale,
    alpha: float = 0.5,
    mask: NDArray[np.bool_] | None = None,
) -> NDArray[np.uint8]:
    """The image with its heatmap blended on top (the map is resized to the image); `mask` draws its outline."""
    h, w = rgb.shape[:2]
    if amap.shape != (h, w):
        amap = np.asarray(Image.fromarray(np.asarray(amap, np.float32)).resize((w, h), Image.Resampling.BILINEAR))
    heat = colorize(amap, scale.vmin, scale.vmax).astype(np.float32)
    out = (rgb.astype(np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)
    if mask is not None and mask.any():
        edge = mask & ~_erode(mask)
        out[edge] = (255, 255, 255)
    return out


@functools.lru_cache(maxsize=64)
def bar_height(width: int) -> int:
    """The height of the colour bar under a picture `width` wide (an overlay is its image plus this)."""
    bar_h = max(8, width // 48)
    return bar_h + int(_font(max(10, bar_h)).getbbox("0.0")[3]) + 4


@functools.lru_cache(maxsize=64)
def colour_bar(width: int, scale: OverlayScale) -> NDArray[np.uint8]:
    """A strip `width` wide: the colour map from `vmin` to `vmax`, the threshold ticked, the three values written.
    Cached: a run draws the same bar under every overlay of one width."""
    bar_h = max(8, width // 48)
    values = np.linspace(scale.vmin, scale.vmax, width, dtype=np.float32)[None, :].repeat(bar_h, axis=0)
    bar = colorize(values, scale.vmin, scale.vmax)
    font = _font(max(10, bar_h))
    strip = Image.new("RGB", (width, bar_height(width)), (0, 0, 0))
    strip.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(strip)
    digits = _digits(scale)
    draw.text((1, bar_h + 1), f"{scale.vmin:.{digits}f}", fill=(255, 255, 255), font=font)
    high = f"{scale.vmax:.{digits}f}"
    draw.text((width - draw.textlength(high, font=font) - 1, bar_h + 1), high, fill=(255, 255, 255), font=font)
    if scale.threshold is not None and scale.vmin <= scale.threshold <= scale.vmax:
        x = round((scale.threshold - scale.vmin) / (scale.vmax - scale.vmin) * (width - 1))
        draw.line([(x, 0), (x, bar_h - 1)], fill=(255, 255, 255), width=max(1, width // 200))
        label = f"t={scale.threshold:.{digits}f}"
        draw.text((x - draw.textlength(label, font=font) / 2, bar_h + 1), label, fill=(255, 255, 255), font=font)
    out = np.asarray(strip).copy()
    out.flags.writeable = False  # shared by the cache
    return out


def with_colour_bar(picture: NDArray[np.uint8], scale: OverlayScale) -> NDArray[np.uint8]:
    """The picture with its scale's colour bar below it."""
    return np.concatenate([picture, colour_bar(picture.shape[1], scale)], axis=0)


def _digits(scale: OverlayScale) -> int:
    """Enough decimals to tell the bar's ends apart (a 0.45..0.55 scale needs more than 0..1)."""
    width = max(scale.vmax - scale.vmin, 1e-12)
    return int(min(6, max(2, np.ceil(-np.log10(width)) + 2)))


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError):
        return ImageFont.load_default()


def _erode(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    padded = np.pad(mask, 1, constant_values=False)
    return padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def mask_image(mask: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """A binary mask as a black and white RGB image."""
    return np.repeat(mask[..., None], 3, axis=2).astype(np.uint8) * 255
