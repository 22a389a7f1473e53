"""Checks on knowledge sentences, for the shipped base and for what a chat server answers (SPEC §3.2.1).

Why: the KD targets and the training-free text are means over these sentences, so a slip weakens them silently. A
sentence that never names its object ("a smooth surface.") pulls every class toward the same point; two classes
whose sentences differ only in the name give the prompts nothing class-specific to learn; "a object" and a paragraph
in place of a sentence are signs of a careless source. Words match by prefix ("wire" matches "wires", "bottle's").
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

from kanoclip.knowledge.base import ClassKnowledge

MAX_WORDS = 15
MIN_SENTENCES = 8  # per state, in the shipped base (SPEC §3.2.1 asks the LLM for 8)
MAX_SHARED = 1 / 3  # of the smaller class's sentences, after the class's own words are masked

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’-]*")
# initialisms read letter by letter: these letters start with a vowel sound ("an MRI", "an X-ray", "a CT")
_VOWEL_LETTERS = set("AEFHILMNORSX")
# vowel letters read with a consonant sound ("a uniform", "a one-piece") and silent h's ("an hour")
_CONSONANT_VOWELS = re.compile(r"^(uni(?:f|q|t|v|on)|us[aeu]|ut[ei]|ur[aei]|ubiq|eu|ewe|one\b|once)")
_SILENT_H = re.compile(r"^(hour|honest|honou?r|heir)")
_VOWEL_NUMBER = re.compile(r"^(8|11(?!\d)|18(?!\d))")  # eight..., eleven, eighteen
_SPOKEN_ACRONYMS = {"FLAIR", "COVID"}  # read as words, not letters: "a FLAIR image"


@dataclass(frozen=True)
class Problem:
    """One finding: where (`cls`/`state`, a sentence or none) and why."""

    cls: str
    state: str
    sentence: str
    reason: str

    def __str__(self) -> str:
        return f"{self.cls}/{self.state}: {self.reason}" + (f": {self.sentence!r}" if self.sentence else "")


def words(sentence: str) -> list[str]:
    return _WORD.findall(sentence)


def article(word: str) -> str:
    """ "a" or "an" before `word`, by its sound: initialisms by their first letter's name, numbers as spoken."""
    head = re.split(r"[-’']", word)[0]
    if head[:1].isdigit():
        return "an" if _VOWEL_NUMBER.match(head) else "a"
    initialism = len(head) > 1 and head.isupper() and head not in _SPOKEN_ACRONYMS
    letter = len(head) == 1 and head.isalpha() and (head.isupper() or word != head)
    if initialism or letter:  # "an MRI", "a U-bolt", "an X-ray", "an H&E stain"
        return "an" if head[0].upper() in _VOWEL_LETTERS else "a"
    low = word.lower()
    if _SILENT_H.match(low):
        return "an"
    return "an" if low[:1] in "aeiou" and not _CONSONANT_VOWELS.match(low) else "a"


def agree(text: str) -> str:
    """The text with every "a"/"an" matched to the word after it ("a photo of a object" -> "... an object")."""
    return re.sub(r"\b([Aa])n? (?=(\S+))", lambda m: f"{m.group(1)}{article(m.group(2))[1:]} ", text)


def with_article(noun: str) -> str:
    return f"{article(noun.split()[0])} {noun}" if noun.strip() else "an object"


def mentions(sentence: str, phrase: str) -> bool:
    """True when the phrase's words start consecutive words of the sentence ("metal nut" in "the metal nuts")."""
    have = [w.lower() for w in words(sentence)]
    want = [w.lower() for w in words(phrase)]
    return bool(want) and any(
        all(have[i + j].startswith(w) for j, w in enumerate(want)) for i in range(len(have) - len(want) + 1)
    )


def sentence_problems(sentence: str, terms: Iterable[str]) -> list[str]:
    """Why one sentence is unusable for a class with these terms (empty: it is fine)."""
    problems, found = [], words(sentence)
    if len(found) > MAX_WORDS:
        problems.append(f"{len(found)} words (at most {MAX_WORDS})")
    for before, after in itertools.pairwise(found):
        if before.lower() in ("a", "an") and before.lower() != article(after):
            problems.append(f"{before!r} before {after!r} (should be {article(after)!r})")
    terms = list(terms)
    if terms and not any(mentions(sentence, t) for t in terms):
        problems.append(f"names none of {', '.join(terms)}")
    return problems


def lint_entry(key: str, entry: ClassKnowledge, minimum: int = MIN_SENTENCES) -> list[Problem]:
    """Per-sentence problems, repeats within the entry and too few distinct sentences per state."""
    found, seen, terms = [], set(), class_terms(key, entry)
    for state, sentences in (("normal", entry.normal), ("abnormal", entry.abnormal)):
        distinct = {_normalised(s) for s in sentences}
        if len(distinct) < minimum:
            found.append(Problem(key, state, "", f"{len(distinct)} distinct sentences (at least {minimum})"))
        for sentence in sentences:
            found += [Problem(key, state, sentence, r) for r in sentence_problems(sentence, terms)]
            if _normalised(sentence) in seen:
                found.append(Problem(key, state, sentence, "repeated"))
            seen.add(_normalised(sentence))
    return found


def class_terms(key: str, entry: ClassKnowledge) -> list[str]:
    """The words by which a sentence names this class: its terms, else its subject, else its key."""
    return entry.terms or [entry.subject or key.replace("_", " ")]


def masked(key: str, entry: ClassKnowledge) -> set[str]:
    """The entry's sentences with every word of its own naming (key, names, terms) replaced by one mark, so
    that sentences differing only in the class name compare equal across classes."""
    own = {w.lower() for text in [key.replace("_", " "), *entry.names, *entry.terms] for w in words(text)}
    result = set()
    for sentence in entry.normal + entry.abnormal:
        tokens = ["<class>" if any(w.lower().startswith(o) for o in own) else w.lower() for w in words(sentence)]
        result.add(" ".join(t for i, t in enumerate(tokens) if t != "<class>" or tokens[i - 1 : i] != ["<class>"]))
    return result


def shared_sentences(classes: dict[str, ClassKnowledge]) -> list[Problem]:
    """Pairs of classes that share more than a third of the smaller one's (masked) sentences."""
    found, keys = [], list(classes)
    sets = {k: masked(k, classes[k]) for k in keys}
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            common = sets[a] & sets[b]
            if len(common) > MAX_SHARED * min(len(sets[a]), len(sets[b])):
                found.append(Problem(a, "both", "", f"shares {len(common)} sentences with {b!r}"))
    return found


def unmentioned_types(classes: dict[str, ClassKnowledge], table: dict[str, dict[str, list[str]]]) -> list[Problem]:
    """Published defect types (`table`: entry -> type -> cues) that no abnormal sentence of the entry mentions (entries
    the table lacks have none): a sentence mentions a type when it holds every word of one of its cues."""
    found = []
    for key, entry in classes.items():
        for name, cues in table.get(key, {}).items():
            if not any(has_cue(s, cue) for s in entry.abnormal for cue in cues):
                found.append(Problem(key, "abnormal", "", f"never mentions the defect type {name!r} ({cues})"))
    return found


def defect_types() -> dict[str, dict[str, list[str]]]:
    """The shipped table beside the knowledge: entry -> published defect type -> cues (each entry names its source)."""
    text = resources.files("kanoclip.knowledge").joinpath("data/defect_types.json").read_text()
    return {key: entry["types"] for key, entry in json.loads(text)["classes"].items()}


def lint_base(
    classes: dict[str, ClassKnowledge], table: dict[str, dict[str, list[str]]] | None = None
) -> list[Problem]:
    """Everything above over a whole base: the check the shipped file passes in the tests."""
    found = [p for key, entry in classes.items() for p in lint_entry(key, entry)]
    return found + shared_sentences(classes) + unmentioned_types(classes, table or {})


def has_cue(sentence: str, cue: str) -> bool:
    """Every word of the cue starts some word of the sentence, in any order ("chip edge": "a chip on the edge")."""
    have = [w.lower() for w in words(sentence)]
    return all(any(h.startswith(w.lower()) for h in have) for w in words(cue))


def _normalised(sentence: str) -> str:
    return " ".join(w.lower() for w in words(sentence))
