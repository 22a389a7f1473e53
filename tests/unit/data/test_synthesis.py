"""Anomaly synthesis (data.synthesis, issue #32): every mask is exactly the set of changed pixels, on real good images
and synthetic ones, for many seeds; a seed fixes the output; each synthesizer's shape is the papers' one."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from kanoclip.data.images import decode
from kanoclip.data.synthesis import (
    SCAR_LENGTH,
    SCAR_WIDTH,
    SYNTHESIZERS,
    SynthesisError,
    cutpaste,
    perlin,
    synthesize,
)
from kanoclip.errors import ConfigError, KanoclipError

SEEDS = range(50)
Results = dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]]


def noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Every pixel differs from its neighbours: a synthesized shape changes all its pixels, so it shows whole."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def half_black(size: int = 128) -> np.ndarray:
    """Noise above the diagonal, black below: patches land black on black, so some drawn pixels stay unchanged (a
    triangle of them, so the mask is not a rectangle)."""
    image = noise_image(size, size, 1)
    image[np.tri(size, size, -1, dtype=bool)] = 0
    return image


@pytest.fixture(scope="module")
def images(shared_data: Path) -> dict[str, np.ndarray]:
    """Two real good images (one not square) and two synthetic ones."""
    return {
        "hazelnut": decode(shared_data / "MVTec_derived_hazelnut_toy/hazelnut/train/good/01.jpg"),  # 522 x 512
        "bottle": decode(shared_data / "MVTec_AD/bottle/train/good/000.png"),  # 256 x 256
        "noise": noise_image(80, 120),
        "half_black": half_black(),
    }


@pytest.fixture(scope="module")
def results(images: dict[str, np.ndarray]) -> Results:
    """Each synthesizer on each image for 50 seeds, computed once for the tests below."""
    out: Results = {}
    for kind, synthesizer in SYNTHESIZERS.items():
        for name, image in images.items():
            before = image.copy()
            out[kind, name] = [synthesizer(image, np.random.default_rng(seed)) for seed in SEEDS]
            assert np.array_equal(image, before), f"{kind} modified its input"
    return out


@pytest.mark.parametrize("kind", list(SYNTHESIZERS))
def test_the_mask_is_exactly_the_set_of_changed_pixels(
    kind: str, images: dict[str, np.ndarray], results: Results
) -> None:
    """The training target must be true: no mask pixel unchanged, no changed pixel outside the mask."""
    for name, image in images.items():
        for seed, (out, mask) in zip(SEEDS, results[kind, name], strict=True):
            assert out.shape == image.shape and out.dtype == np.uint8
            assert mask.shape == image.shape[:2] and mask.dtype == np.bool_
            assert np.array_equal(mask, (out != image).any(axis=-1)), f"{kind} on {name}, seed {seed}"
            assert mask.any(), f"{kind} on {name}, seed {seed}: nothing synthesized"


@pytest.mark.parametrize("kind", list(SYNTHESIZERS))
def test_different_seeds_give_different_anomalies(kind: str, images: dict[str, np.ndarray], results: Results) -> None:
    for name in images:
        assert len({out.tobytes() for out, _ in results[kind, name]}) == len(SEEDS), f"{kind} on {name}"


@pytest.mark.parametrize("kind", list(SYNTHESIZERS))
def test_the_same_seed_gives_the_same_image_and_mask(
    kind: str, images: dict[str, np.ndarray], results: Results
) -> None:
    """A fresh generator with the same seed reproduces the output bit for bit (resumable, comparable runs)."""
    for name in ("hazelnut", "noise"):
        for seed in range(5):
            out, mask = SYNTHESIZERS[kind](images[name], np.random.default_rng(seed))
            first_out, first_mask = results[kind, name][seed]
            assert np.array_equal(out, first_out) and np.array_equal(mask, first_mask)


def test_no_global_random_state_is_read_or_changed(images: dict[str, np.ndarray]) -> None:
    """Data-loader workers and `train`'s bit-exact resume rely on the generator being the only source."""
    np.random.seed(7)
    random.seed(7)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    outputs = [synthesize(images["bottle"], np.random.default_rng(seed))[0] for seed in range(6)]
    after_numpy = np.random.get_state()
    assert random.getstate() == python_state
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(numpy_state, after_numpy, strict=True))
    np.random.seed(8)  # a different global state changes nothing
    again = [synthesize(images["bottle"], np.random.default_rng(seed))[0] for seed in range(6)]
    assert all(np.array_equal(a, b) for a, b in zip(outputs, again, strict=True))


def bounding_box_fill(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    return len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))


def test_cutpaste_is_a_rectangle_of_2_to_15_percent_of_the_image(results: Results) -> None:
    for name in ("hazelnut", "bottle", "noise", "half_black"):
        for _, mask in results["cutpaste", name]:
            assert mask.mean() <= 0.15, name
    for _, mask in results["cutpaste", "noise"]:  # every pasted pixel changes: the whole rectangle shows
        assert bounding_box_fill(mask) == 1.0
        assert mask.mean() >= 0.016  # 2 % less the rounding of both sides down to whole pixels


def test_pixels_a_patch_leaves_unchanged_are_left_out_of_the_mask(results: Results) -> None:
    """Black pasted on black changes nothing there: the mask keeps only the changed part of the rectangle."""
    fills = [bounding_box_fill(mask) for _, mask in results["cutpaste", "half_black"]]
    assert min(fills) < 0.9 and max(fills) == 1.0


def thickness_and_diameter(mask: np.ndarray) -> tuple[float, float]:
    """The narrowest and widest extent of the mask's pixel centres over directions a degree apart."""
    points = np.argwhere(mask).astype(float)
    angles = np.radians(np.arange(180))
    projections = points @ np.stack([np.cos(angles), np.sin(angles)])
    extents = projections.max(axis=0) - projections.min(axis=0)
    return float(extents.min()), float(extents.max())


def test_a_scar_is_thin_long_and_rotated(images: dict[str, np.ndarray], results: Results) -> None:
    """Width and length as in the paper, scaled by the shorter side / 256 above 256 px; rotated, not axis-aligned."""
    for name in ("hazelnut", "bottle", "noise"):
        scale = max(1.0, min(images[name].shape[:2]) / 256)
        width, length = SCAR_WIDTH[1] * scale, SCAR_LENGTH[1] * scale
        for _, mask in results["scar", name]:
            thickness, diameter = thickness_and_diameter(mask)
            assert thickness <= width + 1, name
            assert diameter <= math.hypot(width, length) + 1, name
    fills = [bounding_box_fill(mask) for _, mask in results["scar", "noise"]]
    assert min(fills) < 0.6  # a thin rectangle at an angle fills little of its bounding box
    long_ones = [thickness_and_diameter(mask) for _, mask in results["scar", "noise"]]
    assert max(diameter / max(thickness, 1) for thickness, diameter in long_ones) > 3


def test_perlin_blends_the_given_texture_by_the_draem_formula(images: dict[str, np.ndarray]) -> None:
    """With beta fixed and a known texture, each changed pixel is rint(beta * image + (1 - beta) * texture)."""
    image = images["hazelnut"].astype(np.float64)
    beta = 0.25
    height, width = images["hazelnut"].shape[:2]
    textured = noise_image(height, width, seed=5)  # the image's size: used as it is
    constant = np.full((7, 5, 3), (255, 0, 128), dtype=np.uint8)  # another size: resized (a constant stays one)
    for texture, fill in ((textured, textured), (constant, constant[0, 0])):
        expected = np.rint(beta * image + (1 - beta) * fill.astype(np.float64)).astype(np.uint8)
        for seed in range(5):
            out, mask = perlin(images["hazelnut"], np.random.default_rng(seed), [texture], (beta, beta))
            assert np.array_equal(mask, (out != images["hazelnut"]).any(axis=-1)) and mask.any()
            assert np.array_equal(out[mask], expected[mask])
            unchanged = ~mask  # outside the region, or blended back to the same value
            assert np.array_equal(out[unchanged], images["hazelnut"][unchanged])


def test_perlin_draws_among_the_given_textures(images: dict[str, np.ndarray]) -> None:
    colours = [(255, 0, 0), (0, 0, 255)]
    textures = [np.full((32, 32, 3), colour, dtype=np.uint8) for colour in colours]
    used = set()
    for seed in range(12):
        out, mask = perlin(images["bottle"], np.random.default_rng(seed), textures, (0.0, 0.0))
        found = {tuple(int(v) for v in pixel) for pixel in out[mask]}
        assert len(found) == 1 and found <= set(colours)  # beta 0: the texture itself, one texture per anomaly
        used |= found
    assert used == set(colours)


def test_perlins_default_texture_is_the_images_own_patches(images: dict[str, np.ndarray]) -> None:
    """With beta 0 the region shows the texture alone: each of its colours is one of the image's own (noise has
    random colours, so a texture from anywhere else would not match)."""
    image = images["noise"]
    own = {tuple(pixel) for pixel in image.reshape(-1, 3).tolist()}
    for seed in range(10):
        out, mask = perlin(image, np.random.default_rng(seed), beta_range=(0.0, 0.0))
        assert mask.sum() > 0 and {tuple(pixel) for pixel in out[mask].tolist()} <= own


@pytest.mark.parametrize("kind", list(SYNTHESIZERS))
def test_a_uniform_image_is_refused_as_too_uniform(kind: str) -> None:
    """Grey 128: colour jitter alone could brighten a pasted patch, but that is not a defect to learn."""
    with pytest.raises(SynthesisError, match=f"too uniform to synthesize a {kind} anomaly on"):
        SYNTHESIZERS[kind](np.full((64, 64, 3), 128, dtype=np.uint8), np.random.default_rng(0))
    assert issubclass(SynthesisError, KanoclipError)  # the CLI prints it without a traceback


def test_a_uniform_image_takes_an_anomaly_from_a_given_texture() -> None:
    uniform = np.full((64, 64, 3), 128, dtype=np.uint8)
    out, mask = perlin(uniform, np.random.default_rng(0), [noise_image(16, 16)])
    assert mask.any() and np.array_equal(mask, (out != uniform).any(axis=-1))


def test_a_tiny_image_is_refused() -> None:
    with pytest.raises(SynthesisError, match="10x12 image is too small"):
        cutpaste(noise_image(12, 10), np.random.default_rng(0))


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((32, 32), dtype=np.uint8),  # grayscale: decode it to RGB first
        np.zeros((32, 32, 4), dtype=np.uint8),
        np.zeros((32, 32, 3), dtype=np.float32),
        [[0, 0, 0]],
    ],
)
def test_anything_but_an_rgb_uint8_array_is_a_callers_error(image: object) -> None:
    for synthesizer in SYNTHESIZERS.values():
        with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 RGB array") as caught:
            synthesizer(image, np.random.default_rng(0))  # type: ignore[arg-type]
        assert type(caught.value) is ValueError  # a bug in the caller, not a user's error


def test_bad_textures_and_betas_are_refused() -> None:
    image = noise_image(32, 32)
    with pytest.raises(ValueError, match=r"texture 1: expected an \(H, W, 3\) uint8"):
        perlin(image, np.random.default_rng(0), [noise_image(8, 8), np.zeros((8, 8), dtype=np.uint8)])
    for betas in ((0.5, 0.2), (-0.1, 0.5), (1.0, 1.0)):
        with pytest.raises(ValueError, match="beta_range"):
            perlin(image, np.random.default_rng(0), beta_range=betas)


def test_synthesize_draws_among_the_kinds_asked_for() -> None:
    """On noise, CutPaste is a full rectangle of >= 1.6 % of the image, a scar stays under 16 x 25 px, and Perlin is
    neither; `kinds` restricts the draw and an unknown kind is a ConfigError."""
    image = noise_image(256, 256)

    def shape(mask: np.ndarray) -> str:
        if bounding_box_fill(mask) == 1.0 and mask.mean() >= 0.016:
            return "cutpaste"
        return "scar" if thickness_and_diameter(mask)[0] <= SCAR_WIDTH[1] + 1 and mask.sum() <= 450 else "other"

    shapes = [shape(synthesize(image, np.random.default_rng(seed))[1]) for seed in range(30)]
    assert set(shapes) == {"cutpaste", "scar", "other"}
    assert {shape(synthesize(image, np.random.default_rng(seed), ["cutpaste"])[1]) for seed in range(8)} == {"cutpaste"}
    for kinds in (["cutpaste", "blur"], []):
        with pytest.raises(ConfigError, match="choose from cutpaste, scar, perlin"):
            synthesize(image, np.random.default_rng(0), kinds)
