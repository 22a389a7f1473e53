"""Reading images and masks the way users have them: RGB, grayscale, palette, RGBA, 16-bit, phone EXIF rotations.

Every failure is an `ImageReadError` that names the file and says what is wrong with it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _open(source: str | Path | bytes, name: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image.load()
    except FileNotFoundError as e:
        raise ImageReadError(f"{name}: no such file") from e
    except IsADirectoryError as e:
        raise ImageReadError(f"{name}: is a folder, not an image") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{name}: not an image file (or a format Pillow cannot read)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{name}: corrupt or truncated image ({e})") from e
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{name}: too many pixels ({e})") from e
    return image


def to_rgb(image: Image.Image) -> np.ndarray:
    """An 8-bit RGB array (H, W, 3). High-bit-depth images (16-bit, float) are stretched from their own min..max to
    0..255, as medical viewers do; alpha is dropped; EXIF orientation is applied."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(image, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        return np.repeat(np.round(a).astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def read_image(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """A file path or encoded bytes -> (H, W, 3) uint8 RGB."""
    label = name or str(source if not isinstance(source, bytes) else "uploaded image")
    return to_rgb(_open(source, label))


Crop = tuple[int, int, int, int]  # (left, top, right, bottom)


def crop_array(array: np.ndarray, crop: Crop | None) -> np.ndarray:
    """Part of an image or mask array, for layouts that cut files (KolektorSDD thirds); None keeps it whole."""
    if crop is None:
        return array
    left, top, right, bottom = crop
    return array[top:bottom, left:right]


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool mask at size x size as the field's evaluation code does it (SPEC §3.1): bilinear resize of the 0/255
    image, then > 0.5 of full scale."""
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image) > 127.5


def read_mask(path: str | Path) -> np.ndarray:
    """A ground-truth mask -> (H, W) bool. Non-zero is defect, except for JPEG masks (lossy): above 127."""
    image = _open(path, str(path))
    a = np.asarray(image.convert("L") if image.mode not in ("L", "1", "P", "I;16", "I") else image)
    if image.mode == "P":  # palette indices: index 0 is background in every mask format seen (KolektorSDD)
        a = np.asarray(image)
    threshold = 127 if Path(path).suffix.lower() in (".jpg", ".jpeg") else 0
    return a > threshold
