"""Defect typing (issue #34): which known type of defect an anomalous region shows, from its CLIP features.

The region's feature: per tap level, the weighted mean of the unit CLIP-VV patch features (the features the maps
and the few-shot bank start from), re-normalised; the levels in use (`KAnoCLIP.map_levels`) are averaged and
normalised again. Weights come from the anomaly map (`region_weights`: the patch's excess over the image's median
map value, so only what stands out counts) or from a ground-truth mask (`mask_weights`: the fraction of the patch the
mask covers).

Scores, for unit region feature r, unit type text embeddings e_t and temperature τ:

    p_text(t) = softmax_t( cos(r, e_t) / τ )
    p_ex(t)   = softmax over the types with examples of cos(r, c_t) / τ, 0 for the others    (c_t: unit mean of the
                type's examples' features, its prototype)
    p(t)      = (1 − w) · p_text(t) + w · p_ex(t)         (w: the examples' weight; p = p_text without examples)

The type is argmax p; below a minimum probability it is reported as `unknown`. Both parts are probabilities, so a
mixture of the two stays one (they sum to 1), whatever the scale of image-text and image-image cosines.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load, save

from kanoclip._files import atomic_write_bytes
from kanoclip.errors import ConfigError

PROTOTYPES_FORMAT = "kanoclip-type-prototypes/1"


def _grid_pool(values: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, H, W) at any size -> (B, grid * grid): the mean over each patch's area, row-major as the tokens are."""
    return F.adaptive_avg_pool2d(values[:, None].float(), (grid, grid)).flatten(1)


def region_weights(anomaly_map: torch.Tensor, grid: int) -> torch.Tensor:
    """Per-patch weights (B, N) from anomaly maps (B, H, W): max(m − median(m), 0) on the map pooled to the patch
    grid, summing to 1 per image; a flat map weighs every patch alike."""
    m = _grid_pool(anomaly_map, grid)  # (B, N)
    w = (m - m.quantile(0.5, dim=1, keepdim=True)).clamp_min(0)  # the median, midway for an even count
    flat = w.sum(dim=1, keepdim=True) <= 0
    w = torch.where(flat, torch.ones_like(w), w)
    return w / w.sum(dim=1, keepdim=True)


def mask_weights(mask: torch.Tensor, grid: int) -> torch.Tensor:
    """Per-patch weights (B, N) from bool masks (B, H, W): the fraction of each patch the mask covers, summing to
    1 per image. An empty mask says nothing about where the defect is: refused."""
    w = _grid_pool(mask, grid)
    if bool((w.sum(dim=1) <= 0).any()):
        raise ConfigError("a defect example's mask is empty: give a mask that marks the defect, or none")
    return w / w.sum(dim=1, keepdim=True)


def region_features(taps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Unit patch features (B, L, N, D) and weights (B, N) -> per level the weighted mean, re-normalised (B, L, D)."""
    return F.normalize(torch.einsum("blnd,bn->bld", taps.float(), weights.float()), dim=-1)


def pool_levels(features: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """Per-level unit features (B, L, D) -> one unit feature per row (B, D): the mean over `levels`, normalised."""
    return F.normalize(features[:, list(levels)].mean(dim=1), dim=-1)


def type_probabilities(region: torch.Tensor, embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax_t(cos(r, e_t) / τ): unit regions (B, D) against unit embeddings (T, D) -> (B, T)."""
    return (region.float() @ embeddings.float().t() / temperature).softmax(dim=-1)


def combined_probabilities(text: torch.Tensor, examples: torch.Tensor | None, weight: float) -> torch.Tensor:
    """(1 − w) · p_text + w · p_ex, both (B, T); p_text alone when no type has examples."""
    return text if examples is None else (1 - weight) * text + weight * examples


def example_probabilities(
    region: torch.Tensor, prototypes: torch.Tensor, columns: Sequence[int], types: int, temperature: float
) -> torch.Tensor:
    """p_ex (B, T): the softmax over the prototypes (T', D) placed at their types' `columns`, 0 elsewhere."""
    out = torch.zeros(region.shape[0], types)
    out[:, list(columns)] = type_probabilities(region, prototypes, temperature)
    return out


@dataclass(frozen=True)
class TypePrototypes:
    """Labelled defect examples as features: per example its unit region feature at every tap level (E, L, D), its
    type, and where it came from. A type's prototype at the levels in use is the normalised mean of its examples'
    pooled features. Immutable: `extended` and `without` return new objects, so a server swaps one in whole.

    `identity` is what the features depend on (backbone, resolution, taps), not a checkpoint's learned parts: a
    profile keeps its examples across adapted model versions of one backbone."""

    features: torch.Tensor  # (E, L, D)
    examples: tuple[dict[str, Any], ...]  # {"type", "path", "sha256", "mask": bool} per row
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def types(self) -> list[str]:
        """The types with examples, in the order they were first given."""
        return list(dict.fromkeys(e["type"] for e in self.examples))

    def counts(self) -> dict[str, int]:
        return {t: sum(e["type"] == t for e in self.examples) for t in self.types}

    def prototypes(self, levels: Sequence[int]) -> tuple[list[str], torch.Tensor]:
        """(types, (T', D)): each type's prototype from its examples' features pooled over `levels`."""
        pooled = pool_levels(self.features, levels)
        types = self.types
        rows = [pooled[[i for i, e in enumerate(self.examples) if e["type"] == t]].mean(dim=0) for t in types]
        return types, F.normalize(torch.stack(rows), dim=-1)

    @property
    def id(self) -> str:
        """Which images as which types: equal ids type alike."""
        listed = ",".join(f"{e['sha256']}:{e['type']}:{int(e['mask'])}" for e in self.examples)
        return hashlib.sha256(listed.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "examples": len(self.examples), "types": self.counts()}

    def extended(self, features: torch.Tensor, examples: Sequence[dict[str, Any]]) -> TypePrototypes:
        """These plus new examples (E', L, D); an image already held (same sha256) takes its new type and features,
        as a corrected verdict should."""
        replaced = {e["sha256"] for e in examples}
        keep = [i for i, e in enumerate(self.examples) if e["sha256"] not in replaced]
        held = self.features[keep] if self.examples else features[:0]
        merged = torch.cat([held, features.float().cpu()])
        return TypePrototypes(merged, (*(self.examples[i] for i in keep), *examples), self.identity)

    def without(self, sha256: Sequence[str]) -> TypePrototypes:
        """These examples less the images with these hashes (a verdict withdrawn)."""
        keep = [i for i, e in enumerate(self.examples) if e["sha256"] not in set(sha256)]
        return TypePrototypes(self.features[keep], tuple(self.examples[i] for i in keep), self.identity)

    def check(self, identity: dict[str, Any], where: str = "the defect examples") -> None:
        """Refuse examples encoded by another backbone, resolution or tap setting."""
        wrong = {k: (self.identity.get(k), v) for k, v in identity.items() if self.identity.get(k) != v}
        if wrong:
            details = "; ".join(f"{k}: examples {a!r}, this model {b!r}" for k, (a, b) in wrong.items())
            raise ConfigError(f"{where} were encoded for another model ({details}); add the examples again")

    def content_sha256(self) -> str:
        return hashlib.sha256(self.features.detach().float().contiguous().numpy().tobytes()).hexdigest()

    def to_bytes(self) -> bytes:
        """One safetensors file: the features, and the examples, identity and content hash as JSON metadata."""
        header = {
            "format": PROTOTYPES_FORMAT,
            "identity": self.identity,
            "examples": list(self.examples),
            "sha256": self.content_sha256(),
        }
        tensors = {"features": self.features.detach().float().cpu().contiguous()}
        return save(tensors, metadata={"kanoclip": json.dumps(header)})

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "defect examples") -> TypePrototypes:
        """What `to_bytes` wrote, refused with what to do when it is not that, was edited, or is damaged."""
        again = "add the examples again"
        try:
            tensors = load(data)
            header = json.loads(_metadata(data).get("kanoclip", "{}"))
        except (SafetensorError, ValueError, KeyError) as e:
            raise ConfigError(f"{where} is not a readable defect-examples file ({e}); {again}") from e
        if not isinstance(header, dict) or header.get("format") != PROTOTYPES_FORMAT or "features" not in tensors:
            raise ConfigError(f"{where} is not a kanoclip defect-examples file")
        examples, features = header.get("examples"), tensors["features"]
        if not isinstance(examples, list) or features.ndim != 3 or len(examples) != features.shape[0]:
            raise ConfigError(f"{where}: its examples and features do not match (edited by hand?); {again}")
        if not all(isinstance(e, dict) and {"type", "sha256", "mask"} <= set(e) for e in examples):
            raise ConfigError(f"{where}: an example lacks its type, sha256 or mask flag; {again}")
        out = cls(features, tuple(examples), dict(header.get("identity") or {}))
        if header.get("sha256") != out.content_sha256() or not math.isfinite(float(features.sum())):
            raise ConfigError(f"{where}: its features do not match the hash they were saved with; {again}")
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_bytes(path, self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | Path) -> TypePrototypes:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read defect examples {path}: {e.strerror}") from e
        return cls.from_bytes(data, str(path))


def _metadata(data: bytes) -> dict[str, str]:
    """A safetensors buffer's metadata: an 8-byte little-endian header length, then the JSON header."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return dict(header.get("__metadata__") or {})
