"""`kanoclip adapt` (#32): from hazelnut's 28 good images alone it synthesizes defects, trains with train's loop,
validates each saved state on held-out parts and their synthesized defects, and writes RUN/final (the best step),
which `detect` and `evaluate` load; its data is written once and reused while its inputs are the same."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from kanoclip.cli import main, parse
from kanoclip.cli.adapt import adapt
from kanoclip.data.datasets import load_dataset
from kanoclip.errors import ConfigError
from kanoclip.evaluation.adapt import prepare
from tests.support.training import TINY_FLAGS

HAZELNUT = "MVTec_derived_hazelnut_toy/hazelnut"
STEPS = ["--max-steps", "4", "--checkpoint-every", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu"]


def test_adapt_on_hazelnuts_good_images_writes_a_checkpoint_detect_and_evaluate_load(
    tmp_path: Path, shared_data: Path
) -> None:
    run = tmp_path / "run"
    goods = shared_data / HAZELNUT / "train" / "good"
    assert main(["adapt", str(goods), "--class-name", "hazelnut", *TINY_FLAGS, *STEPS, "--out", str(run)]) == 0
    validation = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if "validation" in line]
    assert [v["step"] for v in validation] == [2, 4] and all(0 <= v["validation"] <= 1 for v in validation)
    best = json.loads((run / "best.json").read_text())
    assert best["score"] == max(v["validation"] for v in validation)  # the best step is the one kept
    final, kept = (load_file(str(run / d / "model.safetensors")) for d in ("final", "best"))
    assert final.keys() == kept.keys() and all(torch.equal(final[k], kept[k]) for k in final)
    data = json.loads((run / "data.json").read_text())
    assert len(data["goods"]) == 28
    assert len(list((run / "validation" / "hazelnut" / "test" / "good").iterdir())) == round(0.2 * 28)  # held out

    test = sorted((shared_data / HAZELNUT / "test").rglob("*.jpg"))[:2]
    out = tmp_path / "detect"
    assert main(["detect", *map(str, test), "--checkpoint", str(run / "final"), "--out", str(out)]) == 0
    assert len((out / "scores.csv").read_text().splitlines()) == 3
    evaluated = tmp_path / "evaluate"
    root = str(shared_data / "MVTec_derived_hazelnut_toy")
    assert main(["evaluate", root, "--checkpoint", str(run / "final"), "--out", str(evaluated)]) == 0
    assert (evaluated / "results.json").is_file()


def test_the_data_is_written_once_and_again_only_when_its_inputs_change(tmp_path: Path, shared_data: Path) -> None:
    goods = sorted((shared_data / HAZELNUT / "train" / "good").iterdir())[:5]
    train_set, validation = prepare(goods, tmp_path, "hazelnut", ["cutpaste", "perlin"], 0.2, seed=3)
    assert len(validation.test) == 1 + 2 and len(train_set.test) == 4 + 8  # each good and its 2 synthesized parts
    assert {s.defect for s in train_set.test if s.label == 1} == {"synthesized"}
    assert all(s.mask is not None for s in train_set.test if s.label == 1)
    first = {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*.png")}
    prepare(goods, tmp_path, "hazelnut", ["cutpaste", "perlin"], 0.2, seed=3)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*.png")} == first  # reused
    again = tmp_path / "again"
    prepare(goods, again, "hazelnut", ["cutpaste", "perlin"], 0.2, seed=3)
    for p in first:  # the same inputs and seed: the same files, byte for byte
        assert (again / p.relative_to(tmp_path)).read_bytes() == p.read_bytes()
    prepare(goods, tmp_path, "hazelnut", ["cutpaste", "perlin"], 0.2, seed=4)  # another seed: written again
    changed = [p for p in first if not p.exists() or p.read_bytes() != (again / p.relative_to(tmp_path)).read_bytes()]
    assert changed


def test_bad_settings_are_refused_in_words(tmp_path: Path, shared_data: Path) -> None:
    goods = sorted((shared_data / HAZELNUT / "train" / "good").iterdir())[:3]
    for kinds, fraction, one, message in (
        (["glitter"], 0.2, False, "--synth takes cutpaste, scar, perlin"),
        (["scar"], 1.5, False, "--val-fraction must be between 0 and 1"),
        (["scar"], 0.2, True, "adapt needs at least 2 good images"),
    ):
        with pytest.raises(ConfigError, match=message):
            prepare(goods[:1] if one else goods, tmp_path, "hazelnut", kinds, fraction, seed=1)


def _goods_and_defects(root: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """4 small good parts, and a --defects folder: two images with NAME_mask.png beside them, one (a JPEG) without;
    returns the masks given, by image name."""
    rng = np.random.default_rng(5)
    goods, defects = root / "good", root / "defects"
    goods.mkdir()
    defects.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(goods / f"{i}.png")
    masks = {}
    for name, box in (("crack", (slice(4, 20), slice(8, 40))), ("dent", (slice(30, 46), slice(50, 60)))):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(defects / f"{name}.png")
        masks[name] = np.zeros((48, 64), np.uint8)
        masks[name][box] = 255
        Image.fromarray(masks[name]).save(defects / f"{name}_mask.png")
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(defects / "scratch.jpg")
    return goods, defects, masks


def test_real_defects_join_the_training_data_with_their_masks_and_one_without_a_mask_without_one(
    tmp_path: Path,
) -> None:
    goods, defects, masks = _goods_and_defects(tmp_path)
    run = tmp_path / "run"
    flags = ["--max-steps", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--synth", "cutpaste"]
    args = ["adapt", str(goods), "--class-name", "widget", "--defects", str(defects), *TINY_FLAGS, *flags]
    assert main([*args, "--out", str(run)]) == 0
    assert (run / "final" / "model.safetensors").is_file()
    root = run / "data" / "widget"
    # sorted by name: crack, dent (masked) then scratch; each copied byte for byte, its mask beside it under the
    # layout's name
    assert [p.name for p in sorted((root / "test" / "defect").iterdir())] == ["0000.png", "0001.png"]
    assert [p.name for p in sorted((root / "ground_truth" / "defect").iterdir())] == ["0000_mask.png", "0001_mask.png"]
    for j, name in enumerate(("crack", "dent")):
        assert (root / "test" / "defect" / f"{j:04d}.png").read_bytes() == (defects / f"{name}.png").read_bytes()
        written = root / "ground_truth" / "defect" / f"{j:04d}_mask.png"
        assert written.read_bytes() == (defects / f"{name}_mask.png").read_bytes()
        assert np.array_equal(np.asarray(Image.open(written)), masks[name])
    unmasked = [p for p in (root / "test").rglob("*") if p.is_file() and p.suffix == ".jpg"]
    assert [p.read_bytes() for p in unmasked] == [(defects / "scratch.jpg").read_bytes()]
    assert not (root / "ground_truth" / unmasked[0].parent.name).exists()  # no mask made up for it
    # what training read: the real defects as anomalous, the two masks as given, none for the third
    samples = load_dataset(run / "data", "mvtec").test
    real = {s.image.name: s for s in samples if s.label == 1 and s.defect != "synthesized"}
    assert sorted(real) == ["0000.png", "0001.png", "0002.jpg"]
    assert real["0002.jpg"].mask is None
    for j, name in enumerate(("crack", "dent")):
        mask = real[f"{j:04d}.png"].mask
        assert mask is not None and np.array_equal(np.asarray(Image.open(mask)), masks[name])
    assert not any((run / "validation" / "widget" / "test").glob("defect*"))  # real defects train, never validate


def test_a_mask_added_beside_a_defect_image_writes_the_data_again(tmp_path: Path) -> None:
    goods, defects, masks = _goods_and_defects(tmp_path)
    (defects / "crack_mask.png").unlink()
    images = [defects / "crack.png"]
    prepare(sorted(goods.iterdir()), tmp_path / "run", "widget", ["cutpaste"], 0.5, seed=1, defects=images)
    assert not (tmp_path / "run" / "data" / "widget" / "ground_truth" / "defect").exists()
    Image.fromarray(masks["crack"]).save(defects / "crack_mask.png")  # the same image, now with its mask
    data, _ = prepare(sorted(goods.iterdir()), tmp_path / "run", "widget", ["cutpaste"], 0.5, seed=1, defects=images)
    [crack] = [s for s in data.test if s.defect == "defect"]
    assert crack.mask is not None and crack.mask.read_bytes() == (defects / "crack_mask.png").read_bytes()


def test_a_defects_folder_without_images_is_refused_naming_it(tmp_path: Path) -> None:
    goods, _, _ = _goods_and_defects(tmp_path)
    empty = tmp_path / "no defects here"
    empty.mkdir()
    (empty / "notes.txt").write_text("the defect images are elsewhere")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(empty / "lonely_mask.png")  # a mask is not a defect image
    parsed = parse(["adapt", str(goods), "--defects", str(empty), *TINY_FLAGS, "--out", str(tmp_path / "run")])
    with pytest.raises(ConfigError, match=re.escape(str(empty))):
        adapt(parsed)
    assert not (tmp_path / "run").exists()  # refused before anything is written
