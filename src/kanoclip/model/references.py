"""Few-shot normal references (SPEC §9, I20): a bank of good parts' patch features, and the map they give.

A query patch's reference score is 1 − its maximum cosine similarity to the bank of its tap level (exact nearest
neighbour, as WinCLIP+ and AnomalyDINO do). The search runs in chunks, so no full query × bank matrix is ever held;
a bank larger than a limit is reduced by PatchCore's greedy coreset. The bank's features are the L2-normalised
CLIP-VV taps, the features the zero-shot maps start from, so k = 0 leaves the zero-shot path untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from kanoclip._files import atomic_write_bytes
from kanoclip.errors import ConfigError
from kanoclip.model.scoring import fuse_levels, gaussian_blur

BANK_FORMAT = "kanoclip-reference-bank/1"


def nearest_cosine_distance(query: torch.Tensor, bank: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """1 − max_j cos(query_i, bank_j) for unit rows: query (N, D), bank (M, D) -> (N,). The bank is searched in
    blocks of `chunk` rows, so memory holds N x chunk similarities, never N x M. Only the bank (a constant) is cut:
    a loop over the query's length would fix the batch size of an exported graph."""
    q = query.to(bank.dtype)
    best = (q @ bank[:chunk].t()).amax(dim=1).float()
    for j in range(chunk, bank.shape[0], chunk):
        best = torch.maximum(best, (q @ bank[j : j + chunk].t()).amax(dim=1).float())
    return 1 - best


def greedy_coreset(features: torch.Tensor, size: int, projection_dim: int = 128, seed: int = 0) -> torch.Tensor:
    """PatchCore's greedy coreset: start from a seeded random point, then repeatedly add the point farthest (in
    Euclidean distance) from everything chosen so far. Distances on a seeded random projection to
    `projection_dim` when the features are wider (0: none). Returns the chosen row indices, in order."""
    m = features.shape[0]
    if size >= m:
        return torch.arange(m)
    g = torch.Generator().manual_seed(seed)
    x = features.float()
    if projection_dim and x.shape[1] > projection_dim:
        projection = torch.randn(x.shape[1], projection_dim, generator=g) / math.sqrt(projection_dim)
        x = x @ projection.to(x.device)
    chosen = [int(torch.randint(m, (1,), generator=g))]
    nearest = torch.linalg.vector_norm(x - x[chosen[0]], dim=1)
    for _ in range(size - 1):
        farthest = int(nearest.argmax())
        chosen.append(farthest)
        nearest = torch.minimum(nearest, torch.linalg.vector_norm(x - x[farthest], dim=1))
    return torch.tensor(chosen)


@dataclass
class ReferenceBank:
    """Per tap level, unit patch features (M, D) of the reference images, and what they were made with.

    `identity` holds what must match for the bank to be used: the backbone fingerprint, the run resolution, the
    tap settings and the checkpoint's weights hash (None: training-free)."""

    levels: list[torch.Tensor]
    identity: dict[str, Any]
    sources: list[dict[str, str]] = field(default_factory=list)  # {"path", "sha256"} per reference image
    reduced_from: int = 0  # patches per level before the coreset (0: not reduced)

    @property
    def images(self) -> int:
        return len(self.sources)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.levels)

    @property
    def id(self) -> str:
        """Which good parts, in which order, and whether reduced: equal ids give equal maps."""
        listed = ",".join(s["sha256"] for s in self.sources) + f"|{self.reduced_from}"
        return hashlib.sha256(listed.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "images": self.images,
            "patches_per_level": int(self.levels[0].shape[0]) if self.levels else 0,
            "reduced_from": self.reduced_from,
            "bytes": self.nbytes(),
            "sha256": [s["sha256"] for s in self.sources],
        }

    def extended(self, levels: list[torch.Tensor], sources: list[dict[str, str]], limit: int) -> ReferenceBank:
        """This bank plus new features; past `limit` patches per level (0: none) a coreset picks which stay (the
        same rows at every level, so that a patch keeps its meaning across levels)."""
        if self.levels:
            merged = [torch.cat([a, b.to(a.dtype)]) for a, b in zip(self.levels, levels, strict=True)]
        else:
            merged = list(levels)  # an empty bank
        reduced_from = self.reduced_from
        if limit and merged[0].shape[0] > limit:
            reduced_from = max(reduced_from, merged[0].shape[0])
            keep = greedy_coreset(merged[-1], limit).to(merged[-1].device)
            merged = [level[keep] for level in merged]
        return ReferenceBank(merged, self.identity, self.sources + sources, reduced_from)

    def check(self, identity: dict[str, Any], where: str = "the reference bank") -> None:
        """Refuse a bank made for another backbone, resolution, tap setting or checkpoint."""
        wrong = {k: (self.identity.get(k), v) for k, v in identity.items() if self.identity.get(k) != v}
        if wrong:
            details = "; ".join(f"{k}: bank {a!r}, this model {b!r}" for k, (a, b) in wrong.items())
            raise ConfigError(
                f"{where} was built for another model ({details}); rebuild it with `kanoclip reference build` and "
                "the same --checkpoint / model options"
            )

    def content_sha256(self) -> str:
        """A hash of the features themselves, stored in the file and checked on load."""
        digest = hashlib.sha256()
        for level in self.levels:
            digest.update(level.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def check_shape(self, levels: int, dim: int, where: str = "the reference bank") -> None:
        """A bank with one (M, dim) tensor per tap level, every value finite; else a clear error."""
        shapes = [tuple(t.shape) for t in self.levels]
        if len(shapes) != levels or any(len(s) != 2 or s[1] != dim for s in shapes):
            raise ConfigError(
                f"{where} holds tensors of shapes {shapes}, this model needs {levels} level(s) of (patches, {dim}); "
                "rebuild it with `kanoclip reference build`"
            )
        if not all(bool(torch.isfinite(t).all()) for t in self.levels):
            raise ConfigError(
                f"{where} holds non-finite values (NaN or inf); rebuild it with `kanoclip reference build`"
            )

    def save(self, path: str | Path) -> Path:
        """One safetensors file: a tensor per level, and the identity, sources and content hash as JSON in its
        metadata."""
        tensors = {f"level_{i}": t.detach().float().cpu().contiguous() for i, t in enumerate(self.levels)}
        header = {
            "format": BANK_FORMAT,
            "identity": self.identity,
            "sources": self.sources,
            "reduced_from": self.reduced_from,
            "sha256": self.content_sha256(),
        }
        path = Path(path)
        atomic_write_bytes(path, save(tensors, metadata={"kanoclip": json.dumps(header)}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceBank:
        """A bank file, refused with what to do when it is not one, was edited, or is damaged."""
        rebuild = "rebuild it with `kanoclip reference build`"
        try:
            with safe_open(str(path), framework="pt") as f:
                header = json.loads((f.metadata() or {}).get("kanoclip", "{}"))
                names = sorted(f.keys(), key=lambda k: int(k.split("_")[1]))
                levels = [f.get_tensor(k) for k in names]
        except (SafetensorError, OSError, ValueError, IndexError) as e:
            raise ConfigError(f"{path} is not a readable reference bank ({e}); {rebuild}") from e
        if not isinstance(header, dict) or header.get("format") != BANK_FORMAT:
            raise ConfigError(f"{path} is not a kanoclip reference bank (written by `kanoclip reference build`)")
        identity, sources = header.get("identity"), header.get("sources")
        if not isinstance(identity, dict) or not isinstance(sources, list) or not levels:
            raise ConfigError(f"{path} lacks its identity, sources or levels (edited by hand?); {rebuild}")
        bank = cls(levels, identity, sources, int(header.get("reduced_from", 0)))
        if "sha256" not in header or header["sha256"] != bank.content_sha256():
            raise ConfigError(
                f"{path}: its features do not match the hash it was saved with (damaged or edited); {rebuild}"
            )
        return bank


def augmented(pixels: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, 3, S, S) references and their rotations (and flips), as AnomalyDINO augments small banks."""
    if mode == "none":
        return pixels
    views = [torch.rot90(pixels, k, dims=(2, 3)) for k in range(4)]
    if mode == "rot90+flip":
        views += [v.flip(3) for v in views]
    return torch.cat(views)


def encode_good_parts(
    batches: Iterable[torch.Tensor], encode: Callable[[torch.Tensor], list[torch.Tensor]], augment: str
) -> list[torch.Tensor]:
    """Batches of good parts (RGB in [0, 1] at the run resolution), augmented as `augment` says, into unit patch
    features per level, float32 on the CPU: the part of a bank update that needs the model."""
    chunks = [encode(augmented(pixels, augment)) for pixels in batches]
    return [torch.cat([c[i] for c in chunks]).float().cpu() for i in range(len(chunks[0]))] if chunks else []


def reference_map(
    taps: torch.Tensor,
    bank: list[torch.Tensor],
    grid: tuple[int, int],
    size: tuple[int, int],
    fusion: str,
    sigma: float,
    chunk: int,
) -> torch.Tensor:
    """Unit taps (B, L, N, D) of the levels in use and their banks -> the fused, blurred reference map (B, S, S),
    upsampled, fused and blurred exactly as the zero-shot maps are."""
    b, levels, n, _ = taps.shape
    distances = torch.stack(
        [nearest_cosine_distance(taps[:, i].reshape(b * n, -1), bank[i], chunk).view(b, n) for i in range(levels)],
        dim=1,
    )  # (B, L, N)
    maps = F.interpolate(distances.view(b * levels, 1, *grid), size=size, mode="bilinear", align_corners=False)
    return gaussian_blur(fuse_levels(maps.view(b, levels, *size), fusion), sigma)
