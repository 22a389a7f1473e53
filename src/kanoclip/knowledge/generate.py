"""Asking a chat server for knowledge: general sentences per class, one description per auxiliary image.

Our prompts are in `templates/` (the paper's exact prompts are unknown, SPEC §3.2.1); `--templates DIR` replaces
them. Answers pass through the cache, so a re-run asks only what is missing; an answer that parses to nothing is
asked again and, if it stays unusable, recorded under "failures" with the reason. General sentences pass the lint
(`lint.py`) before they are kept; a dropped sentence is recorded under "failures" with the lint's reason.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from kanoclip.data.datasets import DatasetIndex
from kanoclip.data.images import read_image, to_png
from kanoclip.errors import KnowledgeError
from kanoclip.knowledge.base import AGNOSTIC, ClassKnowledge, KnowledgeBase, image_key
from kanoclip.knowledge.cache import AnswerCache, answer_key
from kanoclip.knowledge.client import AnswerFailed, ChatClient
from kanoclip.knowledge.lint import sentence_problems, with_article, words

TEMPLATES = ("general_normal", "general_abnormal", "image_normal", "image_anomalous")
MAX_TOKENS = 77
_BULLET = re.compile(r"^\s*(?:[-*•]+|\(?\d+[.)]|[a-z][.)])\s*")


def load_templates(directory: str | Path | None = None) -> dict[str, str]:
    """Our prompt templates, or a folder with files of the same names (`{name}` is the class, `{a_name}` the class
    with its article: "an object", "a bottle")."""
    templates = {}
    for name in TEMPLATES:
        if directory is None:
            text = resources.files("kanoclip.knowledge").joinpath(f"templates/{name}.txt").read_text()
        else:
            path = Path(directory) / f"{name}.txt"
            if not path.is_file():
                raise KnowledgeError(f"template folder {directory} lacks {name}.txt (expected {list(TEMPLATES)})")
            text = path.read_text()
        templates[name] = " ".join(text.split())
    return templates


def fill(template: str, name: str) -> str:
    return template.format(name=name, a_name=with_article(name))


def parse_sentences(answer: str, limit: int | None = None) -> list[str]:
    """Short sentences from an answer: one per line, bullets and numbering removed, at least three words each."""
    sentences = []
    for line in answer.replace("\r", "\n").split("\n"):
        text = _BULLET.sub("", line).strip().strip('"“”').strip()
        if len(text.split()) < 3 or text.endswith(":"):
            continue  # a heading or a stray word
        sentences.append(text if text[-1] in ".!?" else text + ".")
    return sentences[:limit] if limit else sentences


def token_count(sentence: str) -> int:
    """CLIP BPE tokens including start and end: must stay within 77 (longer text is truncated at encoding)."""
    from open_clip.tokenizer import _tokenizer

    return len(_tokenizer.encode(sentence)) + 2


@dataclass
class Progress:
    done: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)


def _answer(
    client: ChatClient, cache: AnswerCache, prompt: str, limit: int | None, image: bytes | None = None
) -> list[str]:
    """Cached answer, or ask; an answer that parses to no sentence is asked again once before failing."""
    key = answer_key(client.model, prompt, hashlib.sha256(image).hexdigest() if image is not None else "")
    cached = cache.get(key)
    if cached is not None:
        return parse_sentences(cached, limit)
    for _ in range(2):
        answer = client.ask(prompt, image, _mime(image) if image is not None else "image/png")
        sentences = parse_sentences(answer, limit)
        if sentences:
            cache.put(key, answer)
            return sentences
    raise AnswerFailed(f"no usable sentence in the answer {answer[:80]!r}")


def _asked_about(name: str, shipped: KnowledgeBase) -> ClassKnowledge:
    """What the prompts call a class and the words its answers must name: the shipped entry's when the class is one
    of the field's ("metal_nut" is asked about as "metal nut"), else the class name's own words and the generic
    terms of the class-agnostic entry ("the part ...")."""
    key, entry = shipped.lookup(name)
    if key != AGNOSTIC or name == AGNOSTIC:
        return replace(entry, normal=[], abnormal=[])
    own = [w for w in words(name.replace("_", " ")) if not w.isdigit()]
    return ClassKnowledge([], [], subject=" ".join(own) or AGNOSTIC, terms=[*own, *entry.terms])


def generate_general(
    client: ChatClient, classes: Iterable[str], cache: AnswerCache, templates: dict[str, str]
) -> tuple[KnowledgeBase, Progress]:
    """Normal and abnormal sentences for each class; each kept sentence passes the lint for that class."""
    progress, entries, shipped = Progress(), {}, KnowledgeBase.load()
    names = list(classes)
    bar = tqdm(total=2 * len(names), desc="general knowledge", unit="question")
    for name in names:
        entry = _asked_about(name, shipped)
        for state in ("normal", "abnormal"):
            try:
                kept = _linted(
                    _answer(client, cache, fill(templates[f"general_{state}"], entry.subject), None),
                    entry.terms,
                    f"{name}/{state}",
                    progress,
                )
                if not kept:
                    raise AnswerFailed("no sentence passed the lint")
                getattr(entry, state).extend(kept)
                progress.done += 1
            except AnswerFailed as e:
                progress.failed += 1
                progress.failures.append({"item": f"{name}/{state}", "reason": str(e)})
            bar.update()
            bar.set_postfix(done=progress.done, failed=progress.failed)
        if entry.normal and entry.abnormal:
            entries[name] = entry
    bar.close()
    header = {"written_by": f"kanoclip knowledge general, model {client.model}", "templates": templates}
    return KnowledgeBase(entries, header), progress


def _linted(sentences: list[str], terms: list[str], item: str, progress: Progress) -> list[str]:
    """The sentences that fit CLIP's context and pass the lint; the others are recorded with the reason."""
    kept = []
    for sentence in sentences:
        problems = sentence_problems(sentence, terms)
        if token_count(sentence) > MAX_TOKENS:
            problems.append(f"over {MAX_TOKENS} CLIP tokens")
        if problems:
            progress.failures.append({"item": item, "reason": f"dropped {sentence!r}: {'; '.join(problems)}"})
        elif sentence not in kept:
            kept.append(sentence)
    return kept


def generate_images(
    client: ChatClient, index: DatasetIndex, cache: AnswerCache, templates: dict[str, str]
) -> tuple[dict[str, Any], Progress]:
    """One description per test image of an auxiliary dataset, with the image sent inline; the prompt calls the class
    what its knowledge entry does (BTAD's "01" is an "industrial product")."""
    progress, images, shipped = Progress(), {}, KnowledgeBase.load()
    bar = tqdm(index.test, desc="image knowledge", unit="image")
    for sample in bar:
        template = templates["image_anomalous" if sample.label else "image_normal"]
        prompt = fill(template, _asked_about(sample.cls, shipped).subject)
        try:
            raw = sample.image.read_bytes()
        except OSError as e:
            raise KnowledgeError(f"cannot read {sample.image}: {e.strerror}") from e
        try:
            sentence = _answer(client, cache, prompt, 1, sendable(raw, str(sample.image)))[0]
            images[image_key(index.root, sample.image)] = {
                "label": sample.label,
                "text": sentence,
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
            progress.done += 1
        except AnswerFailed as e:
            progress.failed += 1
            progress.failures.append({"item": str(sample.image), "reason": str(e)})
        bar.set_postfix(done=progress.done, failed=progress.failed)
    header = {"written_by": f"kanoclip knowledge images, model {client.model}", "dataset": str(index.root)}
    return {"header": header, "images": images, "failures": progress.failures}, progress


def sendable(data: bytes, name: str) -> bytes:
    """Bytes every vision API takes: JPEG and 8-bit RGB/grey PNG as they are; anything else (BMP from BTAD, WebP,
    TIFF, 16-bit PNG) decoded by kanoclip's reader and sent as an 8-bit PNG."""
    if _mime(data) == "image/jpeg":
        return data
    if _mime(data) == "image/png":
        with Image.open(io.BytesIO(data)) as probe:
            if probe.mode in ("RGB", "L"):
                return data
    return to_png(read_image(data, name))


def _mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    return "application/octet-stream"
