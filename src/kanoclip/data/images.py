"""The one image decoder: paths, encoded bytes, arrays and PIL images the way users have them (RGB, grayscale,
palette, RGBA, 16-bit, phone EXIF rotations), under the same limits for every entry point.

Every failure is an `ImageReadError` that names the file and says what is wrong with it; an image over the limits is
an `ImageTooLarge` (HTTP 413), found from the header before any pixel is decoded, so a decompression bomb costs
nothing.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from kanoclip.errors import ImageReadError, ImageTooLarge

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Modes `to_rgb` turns into 8-bit RGB; anything else (CMYK, LAB, multi-band) goes through Pillow's RGB conversion.
HIGH_BIT_DEPTH = ("I;16", "I;16B", "I;16L", "I", "F")
ImageLike = NDArray[np.uint8] | Image.Image | str | Path | bytes


@dataclass(frozen=True)
class ImageLimits:
    """What one decoded image may cost, the same on the CLI, over HTTP, on Ray and for references.

    `max_pixels` bounds width x height (checked from the header, before decoding); only the first frame of a
    multi-frame file is decoded, and a file declaring more than `max_frames` frames is refused; `max_bytes` bounds
    an encoded file (0: no limit)."""

    max_pixels: int = 50_000_000
    max_frames: int = 1_000
    max_bytes: int = 0

    def check_size(self, name: str, width: int, height: int) -> None:
        if width * height > self.max_pixels:
            raise ImageTooLarge(
                f"{name}: {width}x{height} pixels is over the {self.max_pixels:,}-pixel limit "
                "(raise it with --max-pixels if the image is genuine)"
            )


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _open(source: str | Path | bytes, name: str, limits: ImageLimits | None = None) -> Image.Image:
    limits = limits or ImageLimits()
    if isinstance(source, bytes) and limits.max_bytes and len(source) > limits.max_bytes:
        raise ImageTooLarge(f"{name}: {len(source):,} bytes is over the {limits.max_bytes:,}-byte limit")
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: our own limit is checked on the next line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        limits.check_size(name, *image.size)
        frames = int(getattr(image, "n_frames", 1) or 1)
        if frames > limits.max_frames:
            raise ImageTooLarge(f"{name}: {frames:,} frames is over the {limits.max_frames:,}-frame limit")
        image.load()
    except FileNotFoundError as e:
        raise ImageReadError(f"{name}: no such file") from e
    except IsADirectoryError as e:
        raise ImageReadError(f"{name}: is a folder, not an image") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{name}: not an image file (or a format Pillow cannot read)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{name}: corrupt or truncated image ({e})") from e
    except Image.DecompressionBombError as e:  # Pillow's own guard, past twice its warning size: before ours
        raise ImageTooLarge(f"{name}: over the {limits.max_pixels:,}-pixel limit ({e})") from e
    return image


def to_rgb(image: Image.Image) -> np.ndarray:
    """An 8-bit RGB array (H, W, 3). High-bit-depth images (16-bit, float) are stretched from their own min..max to
    0..255, as medical viewers do; alpha is dropped; EXIF orientation is applied."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in HIGH_BIT_DEPTH:
        a = np.asarray(image, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        return np.repeat(np.round(a).astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def image_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from an encoded image's header, decoding no pixel: what a pixel budget is checked on."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                return probe.size
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{name}: too many pixels ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{name}: not an image file (or a format Pillow cannot read)") from e


def source_name(image: ImageLike) -> str:
    """How an input is named in results and errors: its path, else its kind."""
    if isinstance(image, str | Path):
        return str(image)
    return "uploaded image" if isinstance(image, bytes) else type(image).__name__


def decode(image: ImageLike, name: str | None = None, limits: ImageLimits | None = None) -> NDArray[np.uint8]:
    """Any input -> (H, W, 3) uint8 RGB, under `limits`: the decoder of files, uploads, Ray tasks, references and
    export calibration alike."""
    label = name or source_name(image)
    limits = limits or ImageLimits()
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ImageReadError(f"{label}: expected an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
        limits.check_size(label, image.shape[1], image.shape[0])
        return image
    if isinstance(image, Image.Image):
        limits.check_size(label, *image.size)
        return to_rgb(image)
    return to_rgb(_open(image, label, limits))


def read_image(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """A file path or encoded bytes -> (H, W, 3) uint8 RGB, under the default limits."""
    return decode(source, name)


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


def to_png(rgb: NDArray[np.uint8]) -> bytes:
    """The one encoder: an RGB array as PNG bytes (overlays, reports, the station's store)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()
