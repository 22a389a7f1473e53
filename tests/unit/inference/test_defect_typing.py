"""Defect typing in the runner (issue #34): which types, the decision with its minimum probability, the options'
checks and the examples folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kanoclip.errors import ConfigError
from kanoclip.inference.config import RunConfig
from kanoclip.inference.defect_typing import DefectTyper, read_examples
from kanoclip.knowledge.type_text import class_types, type_sentences
from kanoclip.model.defect_typing import TypePrototypes


def unit(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a / np.linalg.norm(a, axis=-1, keepdims=True), dtype=torch.float32)


def typer(**run: object) -> DefectTyper:
    return DefectTyper(RunConfig(**run))  # type: ignore[arg-type]


def test_the_types_are_the_listed_ones_else_the_class_s_shipped_ones_then_those_with_examples() -> None:
    assert class_types("bottle") == ["broken_large", "broken_small", "contamination"]
    assert typer().types_for("bottle") == ["broken_large", "broken_small", "contamination"]
    assert typer(defect_types=("scratch, dent", "scratch")).types_for("bottle") == ["scratch", "dent"]
    t = typer(defect_types=("a,b",))
    features = torch.zeros(2, 1, 4)
    rows = ({"type": "c", "sha256": "1", "mask": False}, {"type": "a", "sha256": "2", "mask": False})
    t.examples = TypePrototypes(features, rows)
    assert t.types_for("bottle") == ["a", "b", "c"]
    assert t.types_for("bottle", listed=["x"]) == ["x", "c", "a"]  # evaluate's layout types replace the list


def test_an_unknown_class_names_the_generic_types() -> None:
    assert "scratch" in class_types("no-such-part") and "crack" in class_types("no-such-part")


def test_a_shipped_type_s_text_uses_the_knowledge_sentences_that_mention_its_cues() -> None:
    (large_t, large_k), (_, small_k), (_, dirt_k) = type_sentences(
        "bottle", ["broken_large", "broken_small", "contamination"]
    )
    assert "a photo of a bottle with broken large." in large_t
    assert any("large chunk" in s for s in large_k) and not any("small chip" in s for s in large_k)
    assert any("small chip" in s for s in small_k) and all("contamination" in s for s in dirt_k)
    ((free_t, free_k),) = type_sentences("bottle", ["oil film"])  # free text: its own words, no sentence has them
    assert free_t[0] == "a photo of a bottle with oil film." and free_k == []


def test_classify_mixes_text_and_examples_and_names_unknown_below_the_minimum() -> None:
    rng = np.random.default_rng(0)
    text, region = unit(rng.normal(size=(3, 8))), unit(rng.normal(size=(2, 1, 8)))
    example = unit(rng.normal(size=(1, 1, 8)))
    tau, w = 0.1, 0.25
    t = typer(defect_types=("a,b,c",), type_temperature=tau, type_example_weight=w, type_min_p=0.0)
    t._text[("bottle", ("a", "b", "c"))] = (text, {})  # the text of the types, as `type_text` would give it
    t.examples = TypePrototypes(example, ({"type": "b", "sha256": "1", "mask": False},))
    got = t.classify(None, "bottle", region, [0])  # type: ignore[arg-type]
    r = region[:, 0].numpy()
    p_text = np.exp(r @ text.numpy().T / tau)
    p_text /= p_text.sum(axis=1, keepdims=True)
    want = (1 - w) * p_text + w * np.array([0.0, 1.0, 0.0])  # one type with examples: its softmax is 1
    for row, kind in zip(want, got, strict=True):
        assert kind.type == "abc"[int(row.argmax())]
        assert kind.p == pytest.approx(float(row.max()), rel=1e-5)
        assert kind.probabilities == pytest.approx(dict(zip("abc", row.tolist(), strict=True)), rel=1e-5)
    t.min_p = 1.0  # no mixture of two or more types reaches 1 here
    assert {k.type for k in t.classify(None, "bottle", region, [0])} == {"unknown"}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"defect_types": ("scratch,unknown",)}, "cannot name a type"),
        ({"defect_types": ("a\nb",)}, "cannot name a type"),
        ({"type_temperature": 0.0}, "--type-temperature"),
        ({"type_example_weight": 1.5}, "--type-example-weight"),
        ({"type_min_p": -0.1}, "--type-min-p"),
        ({"defect_types": ("a",), "defect_typing": False}, "--no-defect-typing"),
        ({"defect_examples": "x", "engine": "onnxruntime", "exported": "e"}, "PyTorch engine"),
    ],
)
def test_typing_options_that_cannot_apply_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig(**fields)  # type: ignore[arg-type]


def _png(path: Path, value: int = 128, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path)


def test_an_examples_folder_gives_each_image_its_folder_s_type_and_its_mask(tmp_path: Path) -> None:
    _png(tmp_path / "scratch" / "a.png")
    _png(tmp_path / "scratch" / "a_mask.png", 255)
    _png(tmp_path / "dent" / "b.png")
    found = {
        (e.type, Path(str(e.image)).name, None if e.mask is None else Path(str(e.mask)).name)
        for e in read_examples(tmp_path)
    }
    assert found == {("scratch", "a.png", "a_mask.png"), ("dent", "b.png", None)}


def test_an_examples_folder_without_images_or_with_a_lone_mask_says_which(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images of type 'empty'"):
        read_examples(tmp_path)
    (tmp_path / "empty").rmdir()
    _png(tmp_path / "dent" / "b.png")
    _png(tmp_path / "dent" / "c_mask.png")
    with pytest.raises(ConfigError, match="masks without their image: c"):
        read_examples(tmp_path)
    with pytest.raises(ConfigError, match="no such folder"):
        read_examples(tmp_path / "missing")
