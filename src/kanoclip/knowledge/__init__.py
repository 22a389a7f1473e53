"""KnPL knowledge (SPEC §3.2.1): the knowledge base, the chat client that writes it, and its CLIP encoding."""

from kanoclip.knowledge.base import AGNOSTIC, ClassKnowledge, KnowledgeBase, load_image_knowledge
from kanoclip.knowledge.encode import encode_sentences, knowledge_targets, training_free_text

__all__ = [
    "AGNOSTIC",
    "ClassKnowledge",
    "KnowledgeBase",
    "encode_sentences",
    "knowledge_targets",
    "load_image_knowledge",
    "training_free_text",
]
