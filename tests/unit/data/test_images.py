"""The one decoder: every input kind, the same limits, and a decompression bomb refused before it is decoded."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kanoclip.data.images import ImageLimits, decode
from kanoclip.errors import ImageReadError, ImageTooLarge
from tests.conftest import tiny_detector


def test_paths_bytes_arrays_and_pil_images_decode_alike_under_one_limit(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    inputs = [tmp_path / "a.png", (tmp_path / "a.png").read_bytes(), rgb, Image.fromarray(rgb)]
    for image in inputs:
        assert np.array_equal(decode(image), rgb)
        with pytest.raises(ImageTooLarge, match="40x30 pixels is over the 1,000-pixel limit"):
            decode(image, limits=ImageLimits(max_pixels=1_000))
    assert np.array_equal(decode(rgb[..., 0]), np.repeat(rgb[..., :1], 3, axis=2))  # grayscale arrays
    with pytest.raises(ImageReadError, match="uint8 RGB array"):
        decode(rgb.astype(np.float32))
    with pytest.raises(ImageTooLarge, match="bytes is over"):
        decode((tmp_path / "a.png").read_bytes(), limits=ImageLimits(max_bytes=100))


def test_a_file_declaring_too_many_frames_is_refused(tmp_path: Path) -> None:
    frames = [Image.new("L", (8, 8), i) for i in range(5)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert decode(tmp_path / "anim.gif").shape == (8, 8, 3)  # the first frame
    with pytest.raises(ImageTooLarge, match="5 frames is over the 4-frame limit"):
        decode(tmp_path / "anim.gif", limits=ImageLimits(max_frames=4))


def test_references_are_decoded_under_the_same_limits() -> None:
    det = tiny_detector(max_pixels=1_000)
    buffer = io.BytesIO()
    Image.new("RGB", (50, 50)).save(buffer, format="PNG")
    with pytest.raises(ImageTooLarge, match="over the 1,000-pixel limit"):
        det.add_references([buffer.getvalue()])
