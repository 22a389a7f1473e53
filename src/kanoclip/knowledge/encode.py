"""Knowledge sentences to frozen CLIP text embeddings, cached on disk per backbone (SPEC §3.2.1 step 3).

These are the KD targets in training and the text features of training-free mode. The cache key is the backbone's
weight fingerprint plus the sentences, so a different CLIP or a changed sentence never reuses a stale entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from kanoclip._files import atomic_write_bytes
from kanoclip.knowledge.base import AGNOSTIC, KnowledgeBase
from kanoclip.knowledge.ensemble import ensemble_sentences
from kanoclip.model.kanoclip import KAnoCLIP
from kanoclip.model.losses import KnowledgeTargets


def cache_dir() -> Path:
    return Path(os.environ.get("KANOCLIP_CACHE", Path.home() / ".cache" / "kanoclip")) / "text"


def encode_sentences(model: KAnoCLIP, sentences: list[str], batch_size: int = 256) -> torch.Tensor:
    """(N, D) L2-normalised embeddings; read from the cache when this backbone has encoded them before."""
    path = None
    if model.backbone_fingerprint is not None:
        key = hashlib.sha256(json.dumps([model.backbone_fingerprint, model.config.image_size, sentences]).encode())
        path = cache_dir() / f"{key.hexdigest()}.safetensors"
        if path.is_file():
            try:
                return load_file(str(path))["embeddings"].to(model.mean.device)
            except (SafetensorError, KeyError, OSError):
                path.unlink(missing_ok=True)  # a damaged entry is rebuilt
    chunks = [model.encode_text(sentences[i : i + batch_size]) for i in range(0, len(sentences), batch_size)]
    embeddings = torch.cat(chunks).float()
    if path is not None:
        atomic_write_bytes(path, save({"embeddings": embeddings.cpu().contiguous()}))
    return embeddings


def knowledge_targets(model: KAnoCLIP, knowledge: KnowledgeBase, cls: str = "object") -> KnowledgeTargets:
    """The KD targets of one class (class-agnostic "object" by default, as in zero-shot training)."""
    _, entry = knowledge.lookup(cls)
    embeddings = encode_sentences(model, entry.normal + entry.abnormal)
    return KnowledgeTargets(embeddings[: len(entry.normal)], embeddings[len(entry.normal) :])


def training_free_text(
    model: KAnoCLIP, cls: str = AGNOSTIC, knowledge: KnowledgeBase | None = None, strict: bool = False
) -> tuple[torch.Tensor, dict[str, Any]]:
    """[t_n, t_a] (2, D) for a class in training-free mode, and a record of what made them.

    `config.training_free_text`: "knowledge" = the mean of the class's knowledge sentences (the shipped base looks the
    class up by name and alias, else "object"); "ensemble" = the mean of the WinCLIP-style prompt ensemble for what
    the entry calls the class (BTAD's "01" is "industrial product"; an unknown class keeps its own name);
    "knowledge+ensemble" = the normalised mean of the two unit means. An unknown class is said once, with the
    closest known names (`strict`: an error).
    """
    source = model.config.training_free_text
    knowledge = knowledge or KnowledgeBase.load()
    key, entry = knowledge.find(cls, strict)
    called = entry.subject if key != AGNOSTIC and entry.subject else cls
    parts: list[torch.Tensor] = []
    if "knowledge" in source:
        parts.append(knowledge_targets(model, knowledge, key).means())
    if "ensemble" in source:
        normal, abnormal = ensemble_sentences(called)
        embeddings = encode_sentences(model, normal + abnormal)
        parts.append(KnowledgeTargets(embeddings[: len(normal)], embeddings[len(normal) :]).means())
    text = F.normalize(torch.stack(parts).mean(0), dim=-1)
    record = {
        "class": cls,
        "source": source,
        "knowledge_entry": key if "knowledge" in source else None,
        "ensemble_name": called if "ensemble" in source else None,
    }
    return text, record
