"""Defect typing end to end (issue #34) on MVTec AD bottle (../shared/data: 3 defect types x 5 images, no masks):
`detect` names a type for each image judged anomalous, from the examples, the shipped types or --defect-types; empty
when judged normal, `unknown` below --type-min-p; `evaluate`'s typing numbers equal scikit-learn's on its own
per-image output. Tiny random weights: these check the pipeline, not how well types are named."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix

from kanoclip.cli import main
from kanoclip.inference.defect_typing import read_examples
from kanoclip.inference.outputs import RunFolder
from tests.conftest import tiny_detector

TINY = ["--preset", "kanoclip-tiny", "--workers", "0", "--device", "cpu", "--no-maps"]
TYPES = ("broken_large", "broken_small", "contamination")  # bottle's test folders and its shipped types
ALL = ["--threshold", "0"]  # every score is >= 0: every image is judged anomalous, so every image is typed


def rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "scores.csv").open() as f:
        return {str(Path(r["path"]).relative_to(Path(r["path"]).parents[1])): r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def bottle(shared_data: Path) -> Path:
    return shared_data / "MVTec_AD" / "bottle"


@pytest.fixture(scope="module")
def examples(bottle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIR/<type>/000.png: one example per type (the shared subset has no masks: their maps weigh them)."""
    root = tmp_path_factory.mktemp("examples")
    for kind in TYPES:
        (root / kind).mkdir()
        shutil.copy(bottle / "test" / kind / "000.png", root / kind / "000.png")
    return root


@pytest.fixture(scope="module")
def others(bottle: Path) -> list[str]:
    """The 12 anomalous images that are not examples."""
    found = [str(p) for kind in TYPES for p in sorted((bottle / "test" / kind).glob("*.png")) if p.name != "000.png"]
    assert len(found) == 12
    return found


@pytest.fixture(scope="module")
def text_run(others: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("text")
    assert main(["detect", *others, *TINY, *ALL, "--class-name", "bottle", "--out", str(out), "--overwrite"]) == 0
    return out


def test_one_example_per_type_types_each_of_the_12_other_anomalous_images_among_the_examples_types(
    others: list[str], examples: Path, text_run: Path, tmp_path: Path
) -> None:
    flags = ["--class-name", "bottle", "--defect-examples", str(examples)]
    assert main(["detect", *others, *TINY, *ALL, *flags, "--out", str(tmp_path)]) == 0
    header = (tmp_path / "scores.csv").read_text().splitlines()[0]
    assert header == "path,score,label,defect_type,defect_type_p"  # the two columns last
    typed = rows(tmp_path)
    assert len(typed) == 12 and all(r["label"] == "1" for r in typed.values())
    assert {r["defect_type"] for r in typed.values()} <= set(TYPES)
    assert all(1 / 3 <= float(r["defect_type_p"]) <= 1 for r in typed.values())  # the likeliest of 3
    recorded = json.loads((tmp_path / "run.json").read_text())["defect_typing"]
    assert recorded["examples"]["types"] == dict.fromkeys(TYPES, 1) and recorded["types"] == list(TYPES)
    text_only = rows(text_run)
    assert any(typed[k]["defect_type_p"] != text_only[k]["defect_type_p"] for k in typed)  # the examples count


def test_without_examples_anomalous_images_are_typed_into_bottle_s_shipped_types(text_run: Path) -> None:
    typed = rows(text_run)
    assert len(typed) == 12 and {r["defect_type"] for r in typed.values()} <= set(TYPES)
    assert json.loads((text_run / "run.json").read_text())["defect_typing"]["examples"] is None


def test_defect_types_replace_the_shipped_ones(others: list[str], tmp_path: Path) -> None:
    flags = ["--class-name", "bottle", "--defect-types", "a,b"]
    assert main(["detect", *others[:4], *TINY, *ALL, *flags, "--out", str(tmp_path)]) == 0
    assert {r["defect_type"] for r in rows(tmp_path).values()} <= {"a", "b", "unknown"}


def test_no_threshold_types_nothing_and_normal_images_have_an_empty_type_and_a_high_minimum_gives_unknown(
    bottle: Path, tmp_path: Path
) -> None:
    images = [str(p) for p in sorted((bottle / "test").glob("*/00[01].png"))]  # 2 good, 6 anomalous
    assert main(["detect", *images, *TINY, "--class-name", "bottle", "--out", str(tmp_path / "plain")]) == 0
    assert (tmp_path / "plain" / "scores.csv").read_text().splitlines()[0] == "path,score"  # nothing judged
    assert json.loads((tmp_path / "plain" / "run.json").read_text())["defect_typing"] is None
    scores = sorted(float(r["score"]) for r in rows(tmp_path / "plain").values())
    threshold = (scores[3] + scores[4]) / 2  # 4 judged normal, 4 anomalous
    # tau 1 keeps every logit in [-1, 1]: with 3 types no probability can exceed e/(e + 2/e) < 0.79
    unsure = ["--type-min-p", "0.95", "--type-temperature", "1", "--threshold", str(threshold)]
    assert main(["detect", *images, *TINY, "--class-name", "bottle", *unsure, "--out", str(tmp_path / "t")]) == 0
    typed = rows(tmp_path / "t")
    normal = [r for r in typed.values() if r["label"] == "0"]
    anomalous = [r for r in typed.values() if r["label"] == "1"]
    assert len(normal) == 4 and len(anomalous) == 4
    assert all(r["defect_type"] == "" and r["defect_type_p"] == "" for r in normal)
    assert all(r["defect_type"] == "unknown" and float(r["defect_type_p"]) < 0.79 for r in anomalous)


def test_a_type_named_like_a_formula_is_quoted_and_a_rerun_reads_it_back(others: list[str], tmp_path: Path) -> None:
    argv = ["detect", others[0], *TINY, *ALL, "--defect-types", "=SUM(1)", "--out", str(tmp_path)]
    assert main(argv) == 0
    (row,) = rows(tmp_path).values()
    assert row["defect_type"] == "'=SUM(1)"
    assert next(iter(RunFolder(tmp_path, save_maps=False).scored_rows(True).values())).defect_type == "=SUM(1)"
    before = (tmp_path / "scores.csv").read_bytes()
    assert main(argv) == 0  # the same run: resumed from its scores.csv, rewritten identically
    assert (tmp_path / "scores.csv").read_bytes() == before


def test_evaluate_s_typing_numbers_equal_scikit_learn_s_on_its_own_per_image_output(
    shared_data: Path, examples: Path, tmp_path: Path
) -> None:
    """Examples (weight 1) give varied predictions even on random weights, so the matrix is not one column."""
    flags = ["--class-name", "bottle", "--defect-examples", str(examples), "--type-example-weight", "1"]
    argv = ["evaluate", str(shared_data / "MVTec_AD"), *TINY[:-1], *flags, "--out", str(tmp_path)]
    assert main(argv) == 0
    with (tmp_path / "typing.csv").open() as f:
        listed = list(csv.DictReader(f))
    assert len(listed) == 15 and {r["true_type"] for r in listed} == set(TYPES)
    true, predicted = [r["true_type"] for r in listed], [r["defect_type"] for r in listed]
    assert len(set(predicted)) > 1, "degenerate predictions would not test the matrix"
    (result,) = json.loads((tmp_path / "results.json").read_text())["classes"]
    typing = result["typing"]
    assert typing["accuracy"] == pytest.approx(accuracy_score(true, predicted))
    assert typing["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(true, predicted))
    np.testing.assert_array_equal(typing["confusion"], confusion_matrix(true, predicted, labels=typing["labels"]))
    table = {(r["class"], r["defect"]): r for r in csv.DictReader((tmp_path / "results.csv").open())}
    assert float(table[("bottle", "all")]["typing_accuracy"]) == pytest.approx(accuracy_score(true, predicted))
    assert float(table[("bottle", "all")]["typing_balanced_accuracy"]) == pytest.approx(
        balanced_accuracy_score(true, predicted)
    )
    html = (tmp_path / "report.html").read_text()
    assert re.search(r'<img src="data:image/png;base64,[^"]+" alt="confusion bottle">', html)
    assert f"balanced accuracy {100 * balanced_accuracy_score(true, predicted):.1f}%" in html


def test_a_mask_weighs_an_example_s_region_and_an_example_is_typed_as_its_own_type(tmp_path: Path) -> None:
    """Synthetic parts with exact masks: the masked example differs from the same image weighed by its map; with
    the examples alone deciding (weight 1), each example image is named its own type (its region is exactly its
    example's, so its own prototype is the nearest)."""
    from kanoclip.data.datasets.synthetic import generate

    data = generate(tmp_path / "data", size=64, train=0, good=0, per_defect=2, seed=3)
    folder = tmp_path / "examples"
    for kind in ("scratch", "stain"):
        (folder / kind).mkdir(parents=True)
        shutil.copy(data / "disc" / "test" / kind / "000.png", folder / kind / "000.png")
        shutil.copy(data / "disc" / "ground_truth" / kind / "000_mask.png", folder / kind / "000_mask.png")
    det = tiny_detector(class_name="disc", type_example_weight=1.0, image_threshold=0.0)
    masked = det.encode_defect_examples(read_examples(folder))
    assert [e["mask"] for e in masked.examples] == [True, True]
    by_map = det.encode_defect_examples([e.__class__(e.image, e.type) for e in read_examples(folder)])
    assert not np.allclose(masked.features.numpy(), by_map.features.numpy())
    det.use_defect_examples(by_map)
    images = [data / "disc" / "test" / kind / "000.png" for kind in ("scratch", "stain")]
    assert [p.defect_type for p in det.predict_many(images)] == ["scratch", "stain"]
    moved = det.add_defect_example(images[0], "stain")  # a corrected verdict: the same image, another type
    assert moved.counts() == {"stain": 2} and det.predict_many(images[:1])[0].defect_type == "stain"
