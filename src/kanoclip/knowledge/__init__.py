"""KnPL knowledge (SPEC §3.2.1): the knowledge base, the chat client that writes it, and its CLIP encoding.

Names load lazily (PEP 562): the CLI reads `knowledge.config` without importing torch."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AGNOSTIC": "base",
    "ClassKnowledge": "base",
    "KnowledgeBase": "base",
    "load_image_knowledge": "base",
    "encode_sentences": "encode",
    "knowledge_targets": "encode",
    "training_free_text": "encode",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from kanoclip.knowledge.base import AGNOSTIC as AGNOSTIC
    from kanoclip.knowledge.base import ClassKnowledge as ClassKnowledge
    from kanoclip.knowledge.base import KnowledgeBase as KnowledgeBase
    from kanoclip.knowledge.base import load_image_knowledge as load_image_knowledge
    from kanoclip.knowledge.encode import encode_sentences as encode_sentences
    from kanoclip.knowledge.encode import knowledge_targets as knowledge_targets
    from kanoclip.knowledge.encode import training_free_text as training_free_text


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kanoclip.knowledge' has no attribute {name!r}")
    value = getattr(import_module(f"kanoclip.knowledge.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
