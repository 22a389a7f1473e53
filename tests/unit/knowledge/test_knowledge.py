"""Knowledge: the shipped base, answer parsing, the chat client against a real local server with faults, the cache."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from kanoclip.knowledge import KnowledgeBase, encode_sentences, knowledge_targets
from kanoclip.knowledge.generate import (
    parse_sentences,
    sendable,
)
from tests.conftest import tiny_model

# every class of the standard datasets as the loaders name them, and the entry each one gets
MVTEC = "bottle cable capsule carpet grid hazelnut leather metal_nut pill screw tile toothbrush transistor wood zipper"
VISA = "candle capsules cashew chewinggum fryum macaroni1 macaroni2 pcb4 pipe_fryum"
MPDD = "bracket_black bracket_brown bracket_white connector metal_plate tubes"
DTD = "Blotchy_099 Fibrous_183 Marbled_078 Matted_069 Mesh_114 Perforated_037 Stratified_154 Woven_001 Woven_068"
INDUSTRIAL = {c: c for c in f"{MVTEC} {VISA} {MPDD}".split()}
INDUSTRIAL |= {"pcb1": "pcb", "pcb2": "pcb", "pcb3": "pcb", "01": "btad_product", "02": "btad_product"}
INDUSTRIAL |= {"03": "btad_product", **{f"Class{i}": "dagm_texture" for i in range(1, 11)}}  # BTAD, DAGM
INDUSTRIAL |= {c: c.split("_")[0].lower() for c in f"{DTD} Woven_104 Woven_125 Woven_127".split()}
INDUSTRIAL |= {c: "electrical_commutator" for c in ("electrical_commutator", "electrical_commutators", "kolektorsdd")}
# medical sets as the loaders report their class (folder names as released; BMAD's by its folder)
MEDICAL = {
    "brain_mri": "brain_mri",
    "head_ct": "head_ct",
    "br35h": "brain_mri",
    "Br35H": "brain_mri",
    "covid_19": "covid19",
    "isic": "skin",
    "cvc_colondb": "colon",
    "cvc_clinicdb": "colon",
    "kvasir_seg": "colon",
    "endo": "endoscopy",
    "hyperkvasir": "endoscopy",  # the longest alias wins over "kvasir"
    "tn3k": "thyroid",
    "brats": "brats",
    "chest": "chest",
    "his": "histopathology",
    "liver": "liver",
    "resc": "retina",
    "oct17": "retina",
}


def test_shipped_base_covers_every_class_of_every_supported_dataset() -> None:
    kb = KnowledgeBase.load()
    for name, want in {**INDUSTRIAL, **MEDICAL}.items():
        assert kb.lookup(name)[0] == want, name
    assert kb.lookup("some_new_part")[0] == "object"  # class-agnostic fallback
    assert kb.lookup("thistle")[0] == "object"  # an alias ("his") counts only where a word starts


def test_every_shipped_sentence_fits_in_77_clip_tokens() -> None:
    kb = KnowledgeBase.load()
    sentences = [s for e in kb.classes.values() for s in e.normal + e.abnormal]
    tokens = open_clip.tokenize(sentences, context_length=200)  # untruncated: count start, words and end tokens
    assert int((tokens != 0).sum(1).max()) <= 77


def test_answers_parse_into_short_sentences() -> None:
    answer = (
        "Here are some descriptions:\n1. A smooth, even surface\n- a shiny part with no marks.\n\n2) ok\n"
        "* “Clean edges all around”"
    )
    assert parse_sentences(answer) == [
        "A smooth, even surface.",
        "a shiny part with no marks.",
        "Clean edges all around.",
    ]
    assert parse_sentences("Sure\n\n") == []


@pytest.mark.parametrize(("fmt", "mode"), [("BMP", "RGB"), ("WEBP", "RGB"), ("TIFF", "I;16"), ("PNG", "I;16")])
def test_formats_a_vision_api_may_refuse_are_sent_as_8_bit_png(fmt: str, mode: str) -> None:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        pixels = rng.integers(0, 65535, (20, 30), dtype=np.uint16)
        image = Image.fromarray(pixels)
        expected = np.round((pixels - pixels.min()) / (pixels.max() - pixels.min()) * 255).astype(np.uint8)
        expected = np.repeat(expected[..., None], 3, axis=2)
    else:
        expected = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
        image = Image.fromarray(expected)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    sent = sendable(buffer.getvalue(), f"x.{fmt.lower()}")
    with Image.open(io.BytesIO(sent)) as decoded:
        assert decoded.format == "PNG" and decoded.mode == "RGB"
        assert np.array_equal(np.asarray(decoded), expected)


def test_jpeg_and_8_bit_png_are_sent_unchanged() -> None:
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format=fmt)
        assert sendable(buffer.getvalue(), "x") == buffer.getvalue()


def test_encoded_knowledge_is_cached_per_backbone_and_equals_the_text_tower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KANOCLIP_CACHE", str(tmp_path))
    model = tiny_model()
    sentences = ["a flawless object.", "a scratched metal plate."]
    first = encode_sentences(model, sentences)
    assert len(list((tmp_path / "text").iterdir())) == 1
    with torch.no_grad():
        want = model.clip.encode_text(open_clip.tokenize(sentences))
    assert torch.allclose(first, want / want.norm(dim=-1, keepdim=True), atol=1e-6)
    model.clip.encode_text = None  # a second call must come from the cache
    assert torch.equal(encode_sentences(model, sentences), first)
    other = tiny_model(random_seed=5)
    assert not torch.allclose(encode_sentences(other, sentences), first)  # another backbone, another entry


def test_knowledge_targets_split_normal_and_abnormal_sentences() -> None:
    model = tiny_model()
    kb = KnowledgeBase.load()
    targets = knowledge_targets(model, kb, "bottle")
    entry = kb.classes["bottle"]
    assert targets.normal.shape[0] == len(entry.normal) and targets.abnormal.shape[0] == len(entry.abnormal)
