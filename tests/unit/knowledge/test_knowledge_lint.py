"""The shipped knowledge base against #23's rules, each checked here by its own plain code, and the lint on planted
faults (a/an by sound, length, repeats, naming, classes that differ only in the name)."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest
import torch

from kanoclip.knowledge import KnowledgeBase, training_free_text
from kanoclip.knowledge.base import ClassKnowledge
from kanoclip.knowledge.ensemble import ensemble_sentences
from kanoclip.knowledge.lint import article, lint_base, lint_entry, sentence_problems, shared_sentences
from tests.conftest import tiny_model

DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
KB = KnowledgeBase.load()
TYPES = json.loads(resources.files("kanoclip.knowledge").joinpath("data/defect_types.json").read_text())["classes"]


# every word that follows "an" in the shipped base, each checked by ear: a vowel sound, or a letter read by name
AN_WORDS = {
    "abdominal", "angle", "anomalous", "area", "asymmetric", "axial", "electrical", "elongated", "empty",
    "endoscopic", "even", "extra", "h&e", "industrial", "insect", "intact", "intracranial", "irregular", "object",
    "oct", "oil", "open", "oval", "unblemished", "unbroken", "undamaged", "uneven", "unexpected", "unnatural",
}  # fmt: skip
SILENT_H = ("hour", "honest", "honor", "honour", "heir")


def tokens(sentence: str) -> list[str]:
    return [w.strip(".,;:!?()\"'") for w in sentence.split()]


def test_every_entry_has_8_distinct_normal_and_8_distinct_abnormal_sentences_of_at_most_15_words() -> None:
    assert len(KB.classes) == 55
    for key, entry in KB.classes.items():
        for state in (entry.normal, entry.abnormal):
            assert len({" ".join(tokens(s)).lower() for s in state}) == len(state) >= 8, key
            assert all(len(s.split()) <= 15 for s in state), key
            assert all(s.count(".") == 1 and s.endswith(".") for s in state), key  # one sentence each


def test_a_and_an_follow_the_sound_of_the_next_word_across_the_shipped_base() -> None:
    pairs = [
        (w.lower(), tokens(s)[i + 1])
        for e in KB.classes.values()
        for s in e.normal + e.abnormal
        for i, w in enumerate(tokens(s)[:-1])
        if w.lower() in ("a", "an")
    ]
    assert len(pairs) > 400
    for art, word in pairs:
        low = word.lower()
        if art == "an":
            assert low in AN_WORDS, f"an {word}: check it by ear and add it to AN_WORDS"
        else:  # "a": a consonant sound, so no plain vowel letter first unless sounded "yoo"/"wuh"
            assert low not in AN_WORDS and not low.startswith(SILENT_H), f"a {word}"
            assert low[0] not in "aeio" and (low[0] != "u" or low.startswith(("uni", "us", "u-"))), f"a {word}"
            assert not (word.isupper() and len(word) > 1 and word[0] in "AEFHILMNORSX"), f"a {word}"


def test_no_two_entries_share_more_than_a_third_of_their_sentences_once_the_class_words_are_masked() -> None:
    def masked(key: str, entry: ClassKnowledge) -> set[str]:
        own = sorted({key.replace("_", " "), *entry.names, *entry.terms}, key=len, reverse=True)
        pattern = re.compile(r"\b(" + "|".join(re.escape(o.lower()) for o in own) + r")\S*")
        out = set()
        for s in entry.normal + entry.abnormal:
            text = pattern.sub("X", s.lower())
            text = re.sub(r"[^\w\s-]", " ", text)
            out.add(re.sub(r"X(\s+X)+", "X", " ".join(text.split())))
        return out

    sets = {k: masked(k, e) for k, e in KB.classes.items()}
    worst = max((len(sets[a] & sets[b]) / min(len(sets[a]), len(sets[b])), a, b) for a in sets for b in sets if a < b)
    assert worst[0] <= 1 / 3, worst


def test_every_abnormal_set_mentions_each_published_defect_type_of_its_entry() -> None:
    assert set(TYPES) <= set(KB.classes) and len(TYPES) == len(KB.classes)
    for key, table in TYPES.items():
        assert table["source"] and table["types"], key
        words = [w.lower() for s in KB.classes[key].abnormal for w in tokens(s)]
        sentences = [[w.lower() for w in tokens(s)] for s in KB.classes[key].abnormal]
        for name, cues in table["types"].items():
            hit = any(
                all(any(w.startswith(c) for w in sw) for c in cue.lower().split()) for sw in sentences for cue in cues
            )
            assert hit, (key, name, cues)
        assert words


def test_the_defect_type_table_matches_the_folders_of_the_real_dataset() -> None:
    folders = {p.name for p in (DATA / "MVTec_AD" / "bottle" / "test").iterdir() if p.is_dir()} - {"good"}
    assert set(TYPES["bottle"]["types"]) == folders == {"broken_large", "broken_small", "contamination"}


def test_the_header_says_who_wrote_the_base_and_how_to_regenerate_it() -> None:
    assert "by hand" in KB.header["written_by"] and "GPT-3.5" in KB.header["written_by"]
    assert "kanoclip knowledge general" in KB.header["regenerate"]


@pytest.mark.parametrize(
    ("word", "want"),
    [
        ("object", "an"), ("bottle", "a"), ("uniform", "a"), ("unbroken", "an"), ("unidentified", "an"),
        ("hour", "an"), ("honest", "an"), ("hole", "a"), ("MRI", "an"), ("CT", "a"), ("OCT", "an"), ("PCB", "a"),
        ("X-ray", "an"), ("U-shaped", "a"), ("H&E", "an"), ("FLAIR", "a"), ("8-bit", "an"), ("11-mm", "an"),
        ("18th", "an"), ("180", "a"), ("1-mm", "a"), ("one-piece", "a"), ("euro", "a"), ("usual", "a"), ("upper", "an"),
    ],
)  # fmt: skip
def test_article_follows_the_sound_not_the_letter(word: str, want: str) -> None:
    assert article(word) == want


def test_the_lint_catches_planted_slips() -> None:
    terms = ["bottle", "glass"]
    assert sentence_problems("a bottle with a crack in its glass.", terms) == []
    assert "should be 'an'" in sentence_problems("a object with a scratch on the bottle.", terms)[0]
    assert "should be 'a'" in sentence_problems("an bottle with an uniform colour.", terms)[0]
    assert any("words" in p for p in sentence_problems("the bottle " + "very " * 14 + "clean.", terms))
    assert "names none of" in sentence_problems("a smooth surface without marks.", terms)[0]
    entry = ClassKnowledge(["a clean bottle."] * 2, ["a cracked bottle.", "A cracked bottle!"], terms=terms)
    reasons = [p.reason for p in lint_entry("bottle", entry)]
    assert "repeated" in reasons and sum("distinct sentences" in r for r in reasons) == 2


def test_the_lint_finds_classes_whose_sentences_differ_only_in_the_name() -> None:
    bottle = KB.classes["bottle"]
    jar = ClassKnowledge(
        [s.replace("bottle", "jar") for s in bottle.normal],
        [s.replace("bottle", "jar") for s in bottle.abnormal],
        terms=["jar", "rim", "mouth", "neck", "glass"],
    )
    assert [p.reason for p in shared_sentences({"bottle": bottle, "jar": jar})] == ["shares 16 sentences with 'jar'"]
    assert lint_base(KB.classes, {k: v["types"] for k, v in TYPES.items()}) == []


def test_the_ensemble_has_no_article_slip_for_any_shipped_subject() -> None:
    for entry in KB.classes.values():
        normal, abnormal = ensemble_sentences(entry.subject)
        for s in normal + abnormal:
            assert sentence_problems(s, []) == [], s
    assert "a photo of an object." in ensemble_sentences("object")[0]
    assert "a photo of an unblemished bottle." in ensemble_sentences("bottle")[0]


def test_training_free_text_computes_for_every_entry_and_every_name_on_the_tiny_model() -> None:
    model = tiny_model()
    seen = {}
    for key, entry in KB.classes.items():
        for name in [key, *entry.names]:
            with torch.no_grad():
                text, record = training_free_text(model, name, KB)
            assert text.shape == (2, model.feature_dim) and torch.isfinite(text).all(), name
            assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
            assert record["knowledge_entry"] == key and record["ensemble_name"] == entry.subject
            seen[name] = text
    assert len(seen) == len(KB.classes) + sum(len(e.names) for e in KB.classes.values())
    assert not torch.allclose(seen["bottle"], seen["screw"])
