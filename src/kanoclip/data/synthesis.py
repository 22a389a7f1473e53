"""Anomaly synthesis for `kanoclip adapt` (issue #32): defects with exact masks made from good images alone.

Each synthesizer is a pure function `(image, rng) -> (image, mask)`: `image` an (H, W, 3) uint8 RGB array (the
decoder's output; grayscale comes as three equal channels), `rng` a `numpy.random.Generator` and the only source of
randomness (no global numpy, `random` or torch state is read or changed), so the same image and seed give
bit-identical output on one machine. The input is never modified.

The papers, and the numbers taken from them:
- CutPaste: Li, Sohn, Yoon, Pfister, "CutPaste: Self-Supervised Learning for Anomaly Detection and Localization",
  CVPR 2021. `cutpaste`: a rectangle of 2-15 % of the image's area with an aspect ratio log-uniform in
  [0.3, 1/0.3], colour-jittered (brightness, contrast, saturation and hue, 0.1 each), pasted at a random place.
  `scar` (CutPaste-scar): a long thin rectangle, 2-16 px wide and 10-25 px long, rotated by -45..45 degrees.
- DRAEM: Zavrtanik, Kristan, Skocaj, "DRAEM - A discriminatively trained reconstruction embedding for surface anomaly
  detection", ICCV 2021. `perlin`: Perlin noise on a lattice of 2^k cells per axis (k drawn per axis from 0..5, the
  range of the released code), rotated by -90..90 degrees and thresholded at 0.5; the region is filled with a texture
  blended with opacity beta ~ U[0.1, 1.0) (the paper's interval; the released code draws U[0, 0.8)):
  out = image * (1 - m) + (1 - beta) * texture * m + beta * image * m, rounded half to even (`np.rint`).
  DRAEM's textures are DTD images; here they are `textures` (`--textures`) or, by default, the image's own patches
  shuffled. DRAEM's random augmentations of the texture are not applied.

The mask is exactly the set of changed pixels (any channel differs). A pixel of the drawn shape whose synthesized
value equals the original (a patch over an identical region, a blend that rounds back) is unchanged, so it is left out
of the mask rather than resampled: resampling would bias the draws away from subtle anomalies, and a mask pixel that
is not a changed pixel would teach the model to find a defect that is not there. A draw is resampled only when it
changes nothing (or, for CutPaste, when the patch equals the place it lands on before colour jitter: jitter alone is
not a defect); after `ATTEMPTS` such draws the image is refused with a `SynthesisError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageEnhance

from kanoclip.errors import ConfigError, KanoclipError

RGB = NDArray[np.uint8]
Mask = NDArray[np.bool_]
Synthesizer = Callable[[RGB, np.random.Generator], tuple[RGB, Mask]]

ATTEMPTS = 10  # draws that change nothing before an image is refused as too uniform
MIN_SIDE = 16  # px: a smaller image cannot hold a scar or a patch at another place
JITTER = 0.1  # CutPaste's colour jitter: brightness, contrast and saturation factors in 1 +- 0.1, hue shift +- 0.1
CUTPASTE_AREA = (0.02, 0.15)  # fraction of the image's area
CUTPASTE_ASPECT = 0.3  # aspect ratio log-uniform in [0.3, 1/0.3]
SCAR_WIDTH = (2.0, 16.0)  # px at SCAR_REFERENCE_SIDE
SCAR_LENGTH = (10.0, 25.0)  # px at SCAR_REFERENCE_SIDE
SCAR_ANGLE = 45.0  # degrees either way
SCAR_REFERENCE_SIDE = 256  # the paper's image size: above it, width and length scale with the shorter side
PERLIN_EXPONENTS = (0, 5)  # lattice cells per axis 2^k, k drawn in this range (inclusive) per axis
PERLIN_ANGLE = 90.0  # degrees either way
PERLIN_THRESHOLD = 0.5
PERLIN_REGION_DRAWS = 100  # noise fields drawn before an attempt gives up on a non-empty region (never seen)
BETA_RANGE = (0.1, 1.0)
PATCH_GRIDS = (4, 8, 16)  # the default texture: the image cut into this many cells along its shorter side


class SynthesisError(KanoclipError):
    """A good image cannot carry a synthesized anomaly: too small, or so uniform that no draw changes a pixel."""


def _check_rgb(image: object, what: str = "image") -> None:
    """Only the decoder's output is accepted: anything else is a caller's bug, not a user's file."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{what}: expected an (H, W, 3) uint8 RGB array (decode grayscale to RGB first), got {got}")


def _check(image: RGB) -> tuple[int, int]:
    _check_rgb(image)
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise SynthesisError(
            f"a {width}x{height} image is too small to synthesize an anomaly on (at least {MIN_SIDE} px a side)"
        )
    return height, width


def _draw(image: RGB, kind: str, attempt: Callable[[], tuple[RGB, bool]], hint: str = "") -> tuple[RGB, Mask]:
    """Up to ATTEMPTS draws; the first that changes a pixel (and that `attempt` calls a real anomaly) is kept."""
    for _ in range(ATTEMPTS):
        out, real = attempt()
        mask = (out != image).any(axis=-1)
        if real and mask.any():
            return out, mask
    raise SynthesisError(
        f"the image is too uniform to synthesize a {kind} anomaly on: {ATTEMPTS} draws changed no pixel "
        f"(leave such images out of the good ones{hint})"
    )


def _jitter(patch: RGB, rng: np.random.Generator, strength: float) -> RGB:
    """CutPaste's colour jitter, with Pillow's enhancers (contrast about the patch's mean grey, as torchvision)."""
    if strength == 0:
        return patch
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    hue = round(float(rng.uniform(-strength, strength)) * 256)
    picture = Image.fromarray(patch)
    picture = ImageEnhance.Brightness(picture).enhance(float(brightness))
    picture = ImageEnhance.Contrast(picture).enhance(float(contrast))
    picture = ImageEnhance.Color(picture).enhance(float(saturation))
    hsv = np.asarray(picture.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int64) + hue) % 256
    shifted = Image.frombytes("HSV", picture.size, hsv.tobytes()).convert("RGB")
    return np.asarray(shifted, dtype=np.uint8)


def _check_jitter(jitter: float) -> None:
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")


def cutpaste(image: RGB, rng: np.random.Generator, jitter: float = JITTER) -> tuple[RGB, Mask]:
    """CutPaste: a rectangle of 2-15 % of the image (aspect ratio log-uniform in [0.3, 1/0.3]) cut from one place,
    colour-jittered by `jitter`, pasted at another; the mask is the pasted rectangle's changed pixels."""
    height, width = _check(image)
    _check_jitter(jitter)

    def attempt() -> tuple[RGB, bool]:
        area = rng.uniform(*CUTPASTE_AREA) * height * width
        aspect = math.exp(rng.uniform(math.log(CUTPASTE_ASPECT), -math.log(CUTPASTE_ASPECT)))
        h = min(height, max(1, int(math.sqrt(area * aspect))))
        w = min(width, max(1, int(math.sqrt(area / aspect))))
        sy, ty = (int(v) for v in rng.integers(0, height - h + 1, size=2))
        sx, tx = (int(v) for v in rng.integers(0, width - w + 1, size=2))
        patch = image[sy : sy + h, sx : sx + w]
        real = not np.array_equal(patch, image[ty : ty + h, tx : tx + w])
        out = image.copy()
        out[ty : ty + h, tx : tx + w] = _jitter(patch, rng, jitter)
        return out, real

    return _draw(image, "cutpaste", attempt)


def _rotated_rectangle(
    height: int, width: int, length: int, thickness: int, angle: float, rng: np.random.Generator
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    """The pixels (ys, xs) whose centres fall in a `length` x `thickness` rectangle rotated by `angle` (radians) at a
    random place, and for each the (row, col) of the unrotated patch it shows (nearest neighbour: no new colours)."""
    cos, sin = math.cos(angle), math.sin(angle)
    half_y = (length * abs(cos) + thickness * abs(sin)) / 2  # half the rotated rectangle's bounding box
    half_x = (length * abs(sin) + thickness * abs(cos)) / 2
    cy = rng.uniform(half_y, height - half_y) if height > 2 * half_y else height / 2
    cx = rng.uniform(half_x, width - half_x) if width > 2 * half_x else width / 2
    y0, y1 = max(0, math.floor(cy - half_y)), min(height, math.ceil(cy + half_y))
    x0, x1 = max(0, math.floor(cx - half_x)), min(width, math.ceil(cx + half_x))
    ys, xs = np.mgrid[y0:y1, x0:x1]
    dy, dx = ys + 0.5 - cy, xs + 0.5 - cx
    along = cos * dy + sin * dx  # the rectangle's own axes: its length is the patch's rows
    across = cos * dx - sin * dy
    inside = (np.abs(along) < length / 2) & (np.abs(across) < thickness / 2)
    rows = np.clip(np.floor(along[inside] + length / 2).astype(np.intp), 0, length - 1)
    cols = np.clip(np.floor(across[inside] + thickness / 2).astype(np.intp), 0, thickness - 1)
    return ys[inside], xs[inside], rows, cols


def scar(image: RGB, rng: np.random.Generator, jitter: float = JITTER) -> tuple[RGB, Mask]:
    """CutPaste-scar: a thin patch, 2-16 px wide and 10-25 px long as in the paper at 256 px (for a larger image both
    scale with its shorter side / 256, so a scar looks the same once the image is resized), cut from one place,
    colour-jittered, rotated by -45..45 degrees and pasted at another; the mask is the rotated shape's changed
    pixels."""
    height, width = _check(image)
    _check_jitter(jitter)
    scale = max(1.0, min(height, width) / SCAR_REFERENCE_SIDE)

    def attempt() -> tuple[RGB, bool]:
        thickness = min(width, max(1, round(rng.uniform(*SCAR_WIDTH) * scale)))
        length = min(height, max(1, round(rng.uniform(*SCAR_LENGTH) * scale)))
        angle = math.radians(rng.uniform(-SCAR_ANGLE, SCAR_ANGLE))
        sy = int(rng.integers(0, height - length + 1))
        sx = int(rng.integers(0, width - thickness + 1))
        patch = image[sy : sy + length, sx : sx + thickness]
        ys, xs, rows, cols = _rotated_rectangle(height, width, length, thickness, angle, rng)
        real = bool((patch[rows, cols] != image[ys, xs]).any())
        out = image.copy()
        out[ys, xs] = _jitter(patch, rng, jitter)[rows, cols]
        return out, real

    return _draw(image, "scar", attempt)


def perlin_noise(
    height: int, width: int, cells: tuple[int, int], angle: float, rng: np.random.Generator
) -> NDArray[np.float32]:
    """Gradient (Perlin) noise in [-1, 1] on a lattice of `cells` = (rows, cols) cells over the image, rotated by
    `angle` degrees about the image's centre: unit gradients at the lattice points, the quintic fade 6t^5 - 15t^4 +
    10t^3, scaled by sqrt(2) as DRAEM does so that 0.5 is a quarter of the range."""
    turn = math.radians(angle)
    cos, sin = math.cos(turn), math.sin(turn)
    y = (np.arange(height, dtype=np.float32) + 0.5 - height / 2)[:, None]  # float32: half the time, ample precision
    x = (np.arange(width, dtype=np.float32) + 0.5 - width / 2)[None, :]
    u = (cos * y - sin * x) * (cells[0] / height)  # lattice coordinates of each pixel, rotated
    v = (sin * y + cos * x) * (cells[1] / width)
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = (u - u0).astype(np.float32, copy=False), (v - v0).astype(np.float32, copy=False)
    iu, iv = (u0 - u0.min()).astype(np.intp), (v0 - v0.min()).astype(np.intp)
    columns = int(iv.max()) + 2
    gradients = rng.standard_normal((int(iu.max()) + 2, columns, 2), dtype=np.float32)  # normalised: uniform directions
    gradients /= np.sqrt((gradients**2).sum(axis=-1, keepdims=True))
    gu, gv = gradients[..., 0].ravel(), gradients[..., 1].ravel()
    point = iu * columns + iv  # the lattice point at each pixel's cell's top-left corner, as a flat index

    def corner(du: int, dv: int) -> NDArray[np.float32]:
        at = point + (du * columns + dv)
        return np.asarray(gu.take(at) * (fu - du) + gv.take(at) * (fv - dv))

    def fade(t: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.asarray(t * t * t * (t * (t * 6 - 15) + 10))

    wu, wv = fade(fu), fade(fv)
    n00, n10, n01, n11 = corner(0, 0), corner(1, 0), corner(0, 1), corner(1, 1)
    top = n00 + wu * (n10 - n00)
    bottom = n01 + wu * (n11 - n01)
    return np.asarray(math.sqrt(2) * (top + wv * (bottom - top)))


def _perlin_region(height: int, width: int, rng: np.random.Generator) -> Mask:
    """DRAEM's anomaly region: rotated Perlin noise above 0.5, redrawn while it is empty (about 3 % of fields
    stay below the threshold, mostly coarse ones)."""
    region = np.zeros((height, width), dtype=bool)
    for _ in range(PERLIN_REGION_DRAWS):
        cells = 2 ** rng.integers(PERLIN_EXPONENTS[0], PERLIN_EXPONENTS[1] + 1, size=2)
        angle = rng.uniform(-PERLIN_ANGLE, PERLIN_ANGLE)
        region = perlin_noise(height, width, (int(cells[0]), int(cells[1])), angle, rng) > PERLIN_THRESHOLD
        if region.any():
            break
    return region


def shuffled_patches(image: RGB, rng: np.random.Generator) -> RGB:
    """The default texture: the image cut into square cells (4, 8 or 16 along its shorter side) laid out again in a
    random order, so the fill has the product's own colours and grain but not its structure."""
    height, width = image.shape[:2]
    side = max(1, min(height, width) // int(rng.choice(PATCH_GRIDS)))
    rows, cols = height // side, width // side  # whole source cells
    cells = image[: rows * side, : cols * side].reshape(rows, side, cols, side, 3).swapaxes(1, 2)
    out_rows, out_cols = -(-height // side), -(-width // side)  # cells that cover the image
    order = np.resize(rng.permutation(rows * cols), out_rows * out_cols)
    laid = cells.reshape(rows * cols, side, side, 3)[order].reshape(out_rows, out_cols, side, side, 3)
    return np.ascontiguousarray(laid.swapaxes(1, 2).reshape(out_rows * side, out_cols * side, 3)[:height, :width])


def _resized(texture: RGB, height: int, width: int) -> RGB:
    if texture.shape[:2] == (height, width):
        return texture
    resized = Image.fromarray(texture).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def perlin(
    image: RGB,
    rng: np.random.Generator,
    textures: Sequence[RGB] | None = None,
    beta_range: tuple[float, float] = BETA_RANGE,
) -> tuple[RGB, Mask]:
    """DRAEM: a rotated Perlin-noise region filled with a texture (one of `textures`, resized to the image, or by
    default the image's own shuffled patches) blended with opacity beta ~ U(beta_range): inside the region
    out = rint((1 - beta) * texture + beta * image); the mask is the region's changed pixels."""
    height, width = _check(image)
    for i, texture in enumerate(textures or ()):
        _check_rgb(texture, f"texture {i}")
    low, high = beta_range
    if not 0 <= low <= high <= 1 or low == 1:
        raise ValueError(f"beta_range must satisfy 0 <= low <= high <= 1 with low < 1, got {beta_range}")

    def attempt() -> tuple[RGB, bool]:
        region = _perlin_region(height, width, rng)
        if textures:
            texture = _resized(textures[int(rng.integers(len(textures)))], height, width)
        else:
            texture = shuffled_patches(image, rng)
        beta = rng.uniform(low, high)
        out = image.copy()
        blend = (1 - beta) * texture[region].astype(np.float64) + beta * image[region].astype(np.float64)
        out[region] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
        return out, True

    return _draw(image, "perlin", attempt, " or give --textures")


SYNTHESIZERS: dict[str, Synthesizer] = {"cutpaste": cutpaste, "scar": scar, "perlin": perlin}


def synthesize(
    image: RGB,
    rng: np.random.Generator,
    kinds: Sequence[str] = tuple(SYNTHESIZERS),
    textures: Sequence[RGB] | None = None,
) -> tuple[RGB, Mask]:
    """One anomaly of a kind drawn uniformly (with `rng`) from `kinds` (`--synth`); `textures` feed `perlin`."""
    unknown = [kind for kind in kinds if kind not in SYNTHESIZERS]
    if unknown or not kinds:
        raise ConfigError(
            f"unknown anomaly synthesizer(s) {', '.join(map(repr, unknown)) or '(none given)'}: "
            f"choose from {', '.join(SYNTHESIZERS)}"
        )
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "perlin":
        return perlin(image, rng, textures)
    return SYNTHESIZERS[kind](image, rng)
