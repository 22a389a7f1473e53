"""Defect typing's formulas (issue #34, `model.defect_typing`) against the same formulas written out here in numpy:
the softmax with its temperature, the mixture of text and examples, the region weights and features, and the
prototypes' file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kanoclip.errors import ConfigError
from kanoclip.model.defect_typing import (
    TypePrototypes,
    combined_probabilities,
    example_probabilities,
    mask_weights,
    pool_levels,
    region_features,
    region_weights,
    type_probabilities,
)


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("tau", [0.01, 0.07, 1.0])
def test_type_probabilities_are_the_softmax_of_cosines_over_the_temperature(tau: float) -> None:
    rng = np.random.default_rng(0)
    r, e = unit(rng.normal(size=(4, 16))), unit(rng.normal(size=(3, 16)))
    want = np.array([[np.exp(r[b] @ e[t] / tau) for t in range(3)] for b in range(4)])
    want /= want.sum(axis=1, keepdims=True)
    got = type_probabilities(torch.tensor(r, dtype=torch.float32), torch.tensor(e, dtype=torch.float32), tau)
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-4, atol=1e-6)


def test_a_higher_temperature_flattens_the_distribution() -> None:
    rng = np.random.default_rng(1)
    r, e = torch.tensor(unit(rng.normal(size=(1, 8)))).float(), torch.tensor(unit(rng.normal(size=(4, 8)))).float()
    sharp, flat = type_probabilities(r, e, 0.01), type_probabilities(r, e, 10.0)
    assert float(sharp.max()) > float(flat.max())
    assert float((flat - 0.25).abs().max()) < 0.01  # tau 10: cosines in [-1, 1] barely move the softmax


@pytest.mark.parametrize("w", [0.0, 0.3, 0.5, 1.0])
def test_the_examples_weight_mixes_text_and_example_probabilities(w: float) -> None:
    rng = np.random.default_rng(2)
    r = unit(rng.normal(size=(2, 8)))
    text, protos = unit(rng.normal(size=(4, 8))), unit(rng.normal(size=(2, 8)))
    tau, columns = 0.05, [3, 1]  # prototypes for types 3 and 1 only
    p_text = softmax(r @ text.T / tau)
    p_ex = np.zeros((2, 4))
    p_ex[:, columns] = softmax(r @ protos.T / tau)
    want = (1 - w) * p_text + w * p_ex
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    got_ex = example_probabilities(t(r), t(protos), columns, 4, tau)
    got = combined_probabilities(type_probabilities(t(r), t(text), tau), got_ex, w)
    np.testing.assert_allclose(got_ex.numpy(), p_ex, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(got.sum(dim=1).numpy(), 1.0, rtol=1e-5)
    assert float(got[:, [0, 2]].max()) <= (1 - w) + 1e-6  # types without examples get only the text's share


def test_without_examples_the_text_probabilities_are_the_answer() -> None:
    p = torch.tensor([[0.2, 0.8]])
    assert combined_probabilities(p, None, 0.7) is p


def test_region_weights_are_the_excess_over_the_median_of_the_patch_means() -> None:
    amap = np.zeros((1, 4, 4), dtype=np.float32)
    amap[0, :2, :2] = [[1.0, 3.0], [5.0, 7.0]]  # patch (0, 0) of a 2x2 grid: mean 4
    amap[0, 2:, 2:] = 2.0  # patch (1, 1): mean 2
    patches = np.array([4.0, 0.0, 0.0, 2.0])  # row-major, as the tokens are
    excess = np.maximum(patches - np.median(patches), 0)  # median 1 -> [3, 0, 0, 1]
    got = region_weights(torch.tensor(amap), 2)
    np.testing.assert_allclose(got.numpy()[0], excess / excess.sum(), rtol=1e-6)


def test_a_flat_map_weighs_every_patch_alike() -> None:
    got = region_weights(torch.full((2, 8, 8), 0.3), 4)
    np.testing.assert_allclose(got.numpy(), 1 / 16, rtol=1e-6)


def test_mask_weights_are_the_covered_fraction_of_each_patch_and_an_empty_mask_is_refused() -> None:
    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, 0, 0] = mask[0, 0, 1] = mask[0, 3, 3] = True  # patch 0: 2 of 4 pixels, patch 3: 1 of 4
    got = mask_weights(torch.tensor(mask), 2)
    np.testing.assert_allclose(got.numpy()[0], np.array([0.5, 0, 0, 0.25]) / 0.75, rtol=1e-6)
    with pytest.raises(ConfigError, match="mask is empty"):
        mask_weights(torch.zeros(1, 4, 4, dtype=torch.bool), 2)


def test_region_features_are_the_weighted_mean_per_level_renormalised_and_levels_pool_the_same_way() -> None:
    rng = np.random.default_rng(3)
    taps = unit(rng.normal(size=(2, 3, 5, 8)))  # (B, L, N, D)
    w = rng.random((2, 5))
    w /= w.sum(axis=1, keepdims=True)
    want = unit(np.einsum("blnd,bn->bld", taps, w))
    got = region_features(torch.tensor(taps).float(), torch.tensor(w).float())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)
    pooled = pool_levels(got, [0, 2])
    np.testing.assert_allclose(pooled.numpy(), unit((want[:, 0] + want[:, 2]) / 2), rtol=1e-4, atol=1e-6)


def _examples(types: list[str], seed: int = 0) -> TypePrototypes:
    rng = np.random.default_rng(seed)
    features = torch.tensor(unit(rng.normal(size=(len(types), 2, 8)))).float()
    rows = tuple({"type": t, "path": f"{i}.png", "sha256": f"h{i}", "mask": i % 2 == 0} for i, t in enumerate(types))
    return TypePrototypes(features, rows, {"backbone_fingerprint": "x", "image_size": 112})


def test_a_prototype_is_the_normalised_mean_of_its_examples_pooled_features() -> None:
    examples = _examples(["scratch", "dent", "scratch"])
    names, protos = examples.prototypes([0, 1])
    pooled = unit(examples.features.numpy().mean(axis=1))
    assert names == ["scratch", "dent"]
    np.testing.assert_allclose(protos[0].numpy(), unit(pooled[0] + pooled[2]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(protos[1].numpy(), pooled[1], rtol=1e-5, atol=1e-6)


def test_prototypes_survive_their_file_and_a_damaged_or_foreign_file_is_refused(tmp_path: object) -> None:
    examples = _examples(["scratch", "dent"])
    again = TypePrototypes.from_bytes(examples.to_bytes())
    assert torch.equal(again.features, examples.features) and again.examples == examples.examples
    assert again.identity == examples.identity and again.id == examples.id
    data = bytearray(examples.to_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"  # the last float becomes +inf: the hash no longer matches
    with pytest.raises(ConfigError, match="hash"):
        TypePrototypes.from_bytes(bytes(data))
    with pytest.raises(ConfigError, match="not a readable"):
        TypePrototypes.from_bytes(b"not a file")
    with pytest.raises(ConfigError, match="another model"):
        again.check({"backbone_fingerprint": "y", "image_size": 112})


def test_an_image_given_again_takes_its_new_type_and_without_drops_it() -> None:
    examples = _examples(["scratch", "dent"])
    moved = examples.extended(
        examples.features[:1] * 1, [{"type": "crack", "path": "0.png", "sha256": "h0", "mask": 0}]
    )
    assert [e["type"] for e in moved.examples] == ["dent", "crack"] and moved.features.shape[0] == 2
    assert moved.counts() == {"dent": 1, "crack": 1}
    assert [e["sha256"] for e in moved.without(["h1"]).examples] == ["h0"]
