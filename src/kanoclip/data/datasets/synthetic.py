"""A synthetic dataset in the MVTec AD layout, with pasted defects and exact masks, for tests and the demo.

Two classes: `texture` (a smooth random surface) and `disc` (a round part on a plain background). Defects: `scratch`
(a thin bright or dark line) and `stain` (a dark ellipse). Same seed, same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    base = gaussian_filter(rng.random((size, size)), size / 32)
    base = (base - base.min()) / (np.ptp(base) + 1e-9)
    tint = rng.uniform(0.6, 1.0, 3)
    return np.clip(base[..., None] * tint * 200 + 30, 0, 255).astype(np.uint8)


def _disc(rng: np.random.Generator, size: int) -> np.ndarray:
    image = Image.new("RGB", (size, size), (40, 40, 48))
    draw = ImageDraw.Draw(image)
    r = size * rng.uniform(0.32, 0.38)
    c = size / 2 + rng.uniform(-2, 2, 2)
    draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=(180, 170, 150))
    draw.ellipse([c[0] - r / 3, c[1] - r / 3, c[0] + r / 3, c[1] + r / 3], fill=(120, 110, 100))
    noise = rng.normal(0, 4, (size, size, 3))
    return np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)


def _defect(rng: np.random.Generator, image: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    mask_img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_img)
    lo, hi = size * 0.3, size * 0.7
    if kind == "scratch":
        x0, y0 = rng.uniform(lo, hi, 2)
        angle = rng.uniform(0, np.pi)
        length = size * rng.uniform(0.15, 0.3)
        draw.line(
            [x0, y0, x0 + length * np.cos(angle), y0 + length * np.sin(angle)], fill=255, width=max(2, size // 64)
        )
        colour = np.array([250, 250, 250]) if rng.random() < 0.5 else np.array([10, 10, 10])
    else:
        cx, cy = rng.uniform(lo, hi, 2)
        rx, ry = size * rng.uniform(0.04, 0.09, 2)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        colour = np.array([70, 40, 20])
    mask = np.asarray(mask_img) > 0
    out = image.copy()
    out[mask] = (0.2 * out[mask] + 0.8 * colour).astype(np.uint8)
    return out, mask


def generate(
    root: str | Path, size: int = 128, train: int = 6, good: int = 4, per_defect: int = 4, seed: int = 0
) -> Path:
    """Write `root/<class>/{train/good, test/good, test/<defect>, ground_truth/<defect>/NNN_mask.png}`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for cls, make in (("texture", _texture), ("disc", _disc)):
        for split, folder, count in (("train", "good", train), ("test", "good", good)):
            out = root / cls / split / folder
            out.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(make(rng, size)).save(out / f"{i:03d}.png")
        for defect in ("scratch", "stain"):
            images, masks = root / cls / "test" / defect, root / cls / "ground_truth" / defect
            images.mkdir(parents=True, exist_ok=True)
            masks.mkdir(parents=True, exist_ok=True)
            for i in range(per_defect):
                image, mask = _defect(rng, make(rng, size), defect)
                Image.fromarray(image).save(images / f"{i:03d}.png")
                Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{i:03d}_mask.png")
    return root
