"""Few-shot normal references (SPEC §9): nearest-neighbour maps, coreset, bank files, and the zero-shot path kept."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kanoclip import KAnoCLIPConfig
from kanoclip.data.images import read_image
from kanoclip.errors import ConfigError
from kanoclip.inference.config import RunConfig
from kanoclip.inference.detector import Detector
from kanoclip.model import checkpoint
from kanoclip.model.references import ReferenceBank, greedy_coreset, nearest_cosine_distance
from tests.conftest import TINY, tiny_detector, tiny_model
from tests.support.references import hazelnut

REFERENCE_ONLY = TINY.replace(reference_weight=1e9)  # the final map is then the reference map (to 1e-8)


def detector(config: KAnoCLIPConfig = TINY, references: Path | list[Any] | None = None) -> Detector:
    """A tiny detector; a bank file goes through the run config (as `--reference x.kref`), images through
    `add_references` (the Python API's way)."""
    if isinstance(references, Path):
        return tiny_detector(config, references=(str(references),))
    det = tiny_detector(config)
    if references is not None:
        det.add_references(references)
    return det


def test_chunked_search_equals_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    query = F.normalize(torch.randn(53, 16, generator=g), dim=-1)
    bank = F.normalize(torch.randn(71, 16, generator=g), dim=-1)
    brute = 1 - torch.tensor([max(float(q @ b) for b in bank) for q in query])
    for chunk in (1, 7, 64, 1000):
        assert torch.allclose(nearest_cosine_distance(query, bank, chunk), brute, atol=1e-6)


def test_the_coreset_is_a_subset_that_keeps_the_farthest_point_each_time() -> None:
    """PatchCore's rule: each new point is the one farthest from the points chosen so far."""
    g = torch.Generator().manual_seed(1)
    features = torch.randn(120, 8, generator=g)
    chosen = greedy_coreset(features, 15, projection_dim=0, seed=3).tolist()
    assert len(chosen) == len(set(chosen)) == 15 and all(0 <= i < 120 for i in chosen)
    distance = torch.cdist(features.double(), features.double())
    for step in range(1, 15):
        to_set = distance[:, chosen[:step]].min(dim=1).values
        assert chosen[step] == int(to_set.argmax()), step
    assert greedy_coreset(features, 500).tolist() == list(range(120))  # nothing to reduce
    projected = greedy_coreset(torch.randn(300, 256, generator=g), 20, projection_dim=32)
    assert len(set(projected.tolist())) == 20


def test_a_query_equal_to_its_reference_gives_a_reference_map_of_zero(shared_data: Path) -> None:
    path = hazelnut(shared_data)[0]
    det = detector(REFERENCE_ONLY, references=[path])
    _, amap = det.predict(path)
    assert np.abs(amap).max() < 1e-5


def test_a_foreign_patch_pasted_into_a_reference_is_where_the_map_peaks(shared_data: Path) -> None:
    reference = read_image(hazelnut(shared_data)[0])
    reference = np.asarray(
        torch.nn.functional.interpolate(
            torch.from_numpy(reference).permute(2, 0, 1)[None].float(), size=(224, 224), mode="area"
        )[0]
        .permute(1, 2, 0)
        .round()
        .byte()
    )
    foreign = read_image(next((shared_data / "KolektorSDD" / "kos01").glob("Part0.jpg")))
    query = reference.copy()
    top, left = 140, 56
    query[top : top + 56, left : left + 56] = foreign[400:456, 200:256]
    det = detector(REFERENCE_ONLY, references=[reference])
    _, amap = det.predict(query)
    row, col = np.unravel_index(int(amap.argmax()), amap.shape)
    assert top <= row < top + 56 and left <= col < left + 56, (row, col)
    assert amap[top : top + 56, left : left + 56].mean() > 3 * amap[:100].mean()


def test_no_references_is_the_zero_shot_path_bit_for_bit(shared_data: Path) -> None:
    files = sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("test/*/*.jpg"))[:3]
    det = detector()
    before = list(det.run(files))
    det.add_references(hazelnut(shared_data, 2))
    with_bank = list(det.run(files))
    det.clear_references()
    after = list(det.run(files))
    for a, b, c in zip(before, with_bank, after, strict=True):
        assert a.pred_score == c.pred_score and np.array_equal(a.anomaly_map, c.anomaly_map)
        assert not np.array_equal(a.anomaly_map, b.anomaly_map)
    model = tiny_model()
    images = torch.rand(2, 3, 112, 112)
    levels = len(model.config.tap_layers or ())
    bank = [F.normalize(torch.randn(50, 64, generator=torch.Generator().manual_seed(i)), dim=-1) for i in range(levels)]
    with torch.inference_mode():
        plain = model(images)
        model.setup(bank=bank)
        banked = model(images)
        model.setup(bank=None)
        again = model(images)
    assert torch.equal(plain.anomaly_map, again.anomaly_map) and torch.equal(plain.pred_score, again.pred_score)
    assert not torch.equal(plain.anomaly_map, banked.anomaly_map)  # the bank really was in use between


def test_references_blend_maps_and_scores_as_configured(shared_data: Path) -> None:
    """Final map = (zero-shot + w * reference) / (1 + w); score = (zero-shot + max reference) / 2 (I20)."""
    refs, query = (
        hazelnut(shared_data, 2),
        sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("test/*/*.jpg"))[0],
    )
    zero = detector()
    zero_score, zero_map = zero.predict(query)
    _, ref_map = detector(REFERENCE_ONLY, references=refs).predict(query)
    blended_score, blended_map = detector(TINY.replace(reference_weight=0.5), references=refs).predict(query)
    assert np.allclose(blended_map, (zero_map + 0.5 * ref_map) / 1.5, atol=2e-5)
    assert blended_score == pytest.approx(0.5 * (zero_score + float(ref_map.max())), abs=1e-3)
    kept = detector(TINY.replace(reference_score="zero-shot"), references=refs).predict(query)[0]
    assert kept == pytest.approx(zero_score, abs=1e-6)


def test_the_bank_file_round_trips_bitwise_and_a_mismatched_bank_is_refused(shared_data: Path, tmp_path: Path) -> None:
    det = detector(TINY.replace(reference_augment="rot90"), references=hazelnut(shared_data, 2))
    bank = det.references
    assert bank is not None and bank.images == 2
    assert bank.levels[0].shape[0] == 2 * 4 * 64  # 2 images x 4 rotations x an 8 x 8 patch grid
    path = bank.save(tmp_path / "line3.kref")
    loaded = ReferenceBank.load(path)
    assert all(torch.equal(a, b) for a, b in zip(bank.levels, loaded.levels, strict=True))
    assert loaded.identity == bank.identity and loaded.sources == bank.sources
    assert detector(references=path).references is not None  # the same model takes it
    with pytest.raises(ConfigError, match="image_size"):
        detector(TINY.replace(image_size=98), references=path)
    with pytest.raises(ConfigError, match="backbone_fingerprint"):
        detector(TINY.replace(random_seed=7), references=path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint.save(tiny_model(), tmp_path / "ckpt")
        with pytest.raises(ConfigError, match="checkpoint_sha256"):
            Detector.from_config(
                RunConfig(checkpoint=str(tmp_path / "ckpt"), device="cpu", workers=0, references=(str(path),))
            )
    (tmp_path / "junk.kref").write_bytes(b"not a bank")
    with pytest.raises(ConfigError, match="reference build"):
        ReferenceBank.load(tmp_path / "junk.kref")


def test_a_bank_past_its_limit_is_reduced_by_coreset(shared_data: Path) -> None:
    det = detector(TINY.replace(reference_max_patches=100), references=hazelnut(shared_data, 3))
    bank = det.references
    assert bank is not None and bank.images == 3
    assert all(level.shape[0] == 100 for level in bank.levels) and bank.reduced_from == 3 * 64
