"""Few-shot normal references (SPEC §9): nearest-neighbour maps, coreset, bank files, and the zero-shot path kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kanoclip.cli import main
from kanoclip.data.datasets import load_dataset
from kanoclip.model.references import ReferenceBank
from tests.support.references import hazelnut

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]


def test_reference_build_writes_a_bank_that_detect_uses_like_inline_references(
    shared_data: Path, tmp_path: Path
) -> None:
    goods = hazelnut(shared_data, 3)
    bank = tmp_path / "line3.kref"
    assert main(["reference", "build", *map(str, goods), "--out", str(bank), *TINY_FLAGS]) == 0
    sources = ReferenceBank.load(bank).sources
    assert [s["path"] for s in sources] == [str(g) for g in goods]
    query = str(shared_data / "MVTec_derived_hazelnut_toy" / "hazelnut" / "test")
    for name, ref in (("bank", [str(bank)]), ("inline", [str(g) for g in goods])):
        flags = [x for r in ref for x in ("--reference", r)]
        assert main(["detect", query, "--out", str(tmp_path / name), *flags, *TINY_FLAGS]) == 0
    by_bank = (tmp_path / "bank" / "scores.csv").read_text()
    assert by_bank == (tmp_path / "inline" / "scores.csv").read_text()
    run = json.loads((tmp_path / "bank" / "run.json").read_text())
    assert run["references"]["images"] == 3
    assert main(["reference", "build", str(goods[0]), "--out", str(tmp_path / "x.bin"), *TINY_FLAGS]) == 2


def test_evaluate_few_shot_draws_train_references_per_seed_and_reports_mean_and_std(
    shared_data: Path, tmp_path: Path
) -> None:
    root = shared_data / "MVTec_derived_hazelnut_toy"
    args = ["evaluate", str(root), "--out", str(tmp_path), "--shots", "2", "--shot-seeds", "0,1", *TINY_FLAGS]
    assert main(args) == 0
    document = json.loads((tmp_path / "results.json").read_text())
    (cls,) = document["classes"]
    assert set(cls["references"]) == {"0", "1"} and all(len(v) == 2 for v in cls["references"].values())
    assert cls["references"]["0"] != cls["references"]["1"]
    train = {str(s.image) for s in load_dataset(root).train}
    assert all(path in train for files in cls["references"].values() for path in files)
    assert len(cls["per_seed"]) == 2
    for key, value in cls["metrics"].items():
        if value is not None:
            assert value == pytest.approx(np.mean([m[key] for m in cls["per_seed"]]), abs=1e-12)
    assert " ± " in (tmp_path / "results.md").read_text()
    assert document["info"]["few_shot"] == {"shots": 2, "seeds": [0, 1]}
    assert (
        main(["evaluate", str(shared_data / "Kvasir-SEG"), "--out", str(tmp_path / "k"), "--shots", "1", *TINY_FLAGS])
        == 2
    )
