"""`kanoclip adapt` (#32): from hazelnut's 28 good images alone it synthesizes defects, trains with train's loop,
validates each saved state on held-out parts and their synthesized defects, and writes RUN/final (the best step),
which `detect` and `evaluate` load; its data is written once and reused while its inputs are the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kanoclip.cli import main
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
