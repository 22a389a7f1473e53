"""Knowledge sentences to frozen CLIP text embeddings, cached on disk per backbone (SPEC §3.2.1 step 3).

These are the KD targets in training and the text features of training-free mode. The cache key is the backbone's
weight fingerprint plus the sentences, so a different CLIP or a changed sentence never reuses a stale entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..losses import KnowledgeTargets
from ..model import KAnoCLIP
from .base import KnowledgeBase


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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file({"embeddings": embeddings.cpu().contiguous()}, str(tmp))
        os.replace(tmp, path)
    return embeddings


def knowledge_targets(model: KAnoCLIP, knowledge: KnowledgeBase, cls: str = "object") -> KnowledgeTargets:
    """The KD targets of one class (class-agnostic "object" by default, as in zero-shot training)."""
    _, entry = knowledge.lookup(cls)
    embeddings = encode_sentences(model, entry.normal + entry.abnormal)
    return KnowledgeTargets(embeddings[: len(entry.normal)], embeddings[len(entry.normal) :])


def use_training_free(model: KAnoCLIP, knowledge: KnowledgeBase | None = None, cls: str = "object") -> None:
    """Training-free mode: the model's text features become the knowledge means of `cls`."""
    targets = knowledge_targets(model, knowledge or KnowledgeBase.load(), cls)
    model.use_knowledge_text(targets.normal, targets.abnormal)
