"""Text embeddings of defect types, for zero-shot typing (issue #34; the scoring is `model.defect_typing`).

A class's known types are the shipped table's (`defect_types.json`: per knowledge entry, the published types and
the cues by which a sentence mentions each). A type's embedding is the normalised mean of two unit means, as the
training-free text is built (`encode.training_free_text`, "knowledge+ensemble"):

- the type phrase (its name, underscores read as spaces) in every `TYPE_TEMPLATES` sentence for the class's subject;
- the class's abnormal knowledge sentences that mention the type (every word of one of its cues starts a word of the
  sentence, the knowledge lint's rule); a type no sentence mentions has the templates alone.

A type the table does not list for the class (`--defect-types scratch,dent`, or an example folder's name) is built
from its phrase: the phrase is its own cue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from kanoclip.knowledge.base import AGNOSTIC, KnowledgeBase
from kanoclip.knowledge.encode import encode_sentences
from kanoclip.knowledge.lint import agree, defect_types, has_cue
from kanoclip.model.kanoclip import KAnoCLIP

TYPE_TEMPLATES = (
    "a photo of a {subject} with {phrase}.",
    "a close-up photo of a {subject} with {phrase}.",
    "an industrial photo of a {subject} with {phrase}.",
    "a photo of a {subject} showing {phrase}.",
    "a photo of a damaged {subject}: {phrase}.",
    "a {subject} with a defect of the kind {phrase}.",
)


def phrase(name: str) -> str:
    """How a type name reads in a sentence: `broken_large` -> "broken large"."""
    return " ".join(name.replace("_", " ").split())


def class_types(cls: str, knowledge: KnowledgeBase | None = None) -> list[str]:
    """The shipped types of the knowledge entry a class name finds (its `lookup`; the generic "object" entry's for
    an unknown name or an entry the table lacks)."""
    table = defect_types()
    key, _ = (knowledge or KnowledgeBase.load()).lookup(cls)
    return list(table.get(key) or table[AGNOSTIC])


def type_sentences(
    cls: str, types: Sequence[str], knowledge: KnowledgeBase | None = None
) -> list[tuple[list[str], list[str]]]:
    """Per type: (template sentences, knowledge sentences that mention it)."""
    knowledge = knowledge or KnowledgeBase.load()
    key, entry = knowledge.lookup(cls)
    subject = entry.subject if key != AGNOSTIC and entry.subject else phrase(cls)
    cues_of = defect_types().get(key, {})
    out = []
    for name in types:
        cues = cues_of.get(name) or [phrase(name)]
        templates = [agree(t.format(subject=subject, phrase=phrase(name))) for t in TYPE_TEMPLATES]
        mentioned = [s for s in entry.abnormal if any(has_cue(s, cue) for cue in cues)]
        out.append((templates, mentioned))
    return out


def type_text(
    model: KAnoCLIP, cls: str, types: Sequence[str], knowledge: KnowledgeBase | None = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Unit embeddings (T, D) of `types` for a class, on the CPU, and a record of the sentences that made them."""
    rows, record = [], {}
    for name, (templates, mentioned) in zip(types, type_sentences(cls, types, knowledge), strict=True):
        parts = [F.normalize(encode_sentences(model, templates).mean(0), dim=-1)]
        if mentioned:
            parts.append(F.normalize(encode_sentences(model, mentioned).mean(0), dim=-1))
        rows.append(F.normalize(torch.stack(parts).mean(0), dim=-1))
        record[name] = {"templates": len(templates), "knowledge_sentences": len(mentioned)}
    return torch.stack(rows).float().cpu(), record
