"""Defect typing in the runner (issue #34): the type list of a class, its text, the labelled examples, the decision.

Which types: `--defect-types` if given, else the class's shipped ones (`knowledge.type_text.class_types`), then any
type that has examples and is not listed yet. The scores and their mixture are `model.defect_typing`'s. The
Detector calls `DefectTyper.classify` on the region features of the images it judged anomalous
(`Detector.type_defects`); examples come from a folder (`read_examples`) or one at a time (the station's typed
verdicts) as `TypePrototypes`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from kanoclip.data.images import ImageLike, decode, is_image_file, read_mask, source_name
from kanoclip.data.inputs import looks_like_mask, mask_stem
from kanoclip.errors import ConfigError
from kanoclip.inference.backends import TorchBackend
from kanoclip.inference.config import UNKNOWN_TYPE, RunConfig, check_type_name
from kanoclip.model.defect_typing import (
    TypePrototypes,
    combined_probabilities,
    example_probabilities,
    mask_weights,
    pool_levels,
    region_features,
    region_weights,
    type_probabilities,
)
from kanoclip.model.kanoclip import KAnoCLIP

if TYPE_CHECKING:
    from kanoclip.inference.detector import Detector

MaskLike = NDArray[np.bool_] | str | Path | bytes


@dataclass(frozen=True)
class TypedDefect:
    """One image's type: the likeliest type (or `unknown` below the minimum), its probability, and every type's."""

    type: str
    p: float
    probabilities: dict[str, float]


@dataclass(frozen=True)
class DefectExample:
    """A labelled defect: the image, its type and, optionally, the mask that marks the defect."""

    image: ImageLike
    type: str
    mask: MaskLike | None = None


def read_examples(folder: str | Path) -> list[DefectExample]:
    """`DIR/<type>/*` images as examples of `<type>`; `NAME_mask.png` (or `_gt`, `_label`, ...) beside `NAME.png` is
    its mask. A type folder without images, or a mask without its image, is an error that says which."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"--defect-examples {folder}: no such folder (expected DIR/<type>/*.png)")
    out = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        name = check_type_name(sub.name, f"--defect-examples folder {sub}:")
        files = sorted(p for p in sub.iterdir() if is_image_file(p))
        masks = {mask_stem(p.stem): p for p in files if looks_like_mask(p)}
        images = [p for p in files if not looks_like_mask(p)]
        if not images:
            raise ConfigError(f"--defect-examples {sub}: no images of type {name!r}")
        orphans = sorted(set(masks) - {p.stem for p in images})
        if orphans:
            raise ConfigError(f"--defect-examples {sub}: masks without their image: {', '.join(orphans)}")
        out += [DefectExample(p, name, masks.get(p.stem)) for p in images]
    if not out:
        raise ConfigError(f"--defect-examples {folder}: no type folders (expected DIR/<type>/*.png)")
    return out


def mask_array(mask: MaskLike, shape: tuple[int, int], where: str) -> NDArray[np.bool_]:
    """A mask as bool (H, W) of its image's size: an array, a file (non-zero is defect) or encoded bytes."""
    if isinstance(mask, bytes):
        array = decode(mask, where)[..., 0] > 0
    elif isinstance(mask, str | Path):
        array = read_mask(mask)
    else:
        array = np.asarray(mask).astype(bool)
    if array.shape != shape:
        raise ConfigError(f"{where}: its mask is {array.shape[1]}x{array.shape[0]}, the image {shape[1]}x{shape[0]}")
    return array


class DefectTyper:
    """The run's typing settings, its examples and the text of each class's types (encoded once per class)."""

    def __init__(self, run: RunConfig) -> None:
        self.listed = run.type_names()
        self.temperature, self.weight, self.min_p = run.type_temperature, run.type_example_weight, run.type_min_p
        self.examples: TypePrototypes | None = None
        self._text: dict[tuple[str, tuple[str, ...]], tuple[torch.Tensor, dict[str, Any]]] = {}
        self._shipped: dict[str, list[str]] = {}

    def types_for(
        self, cls: str, listed: Sequence[str] | None = None, examples: TypePrototypes | None = None
    ) -> list[str]:
        """`listed` (evaluate: the layout's types), else --defect-types, else the class's shipped types; then the
        types with examples (these `examples`, else the typer's) that are not among them. With the type
        `unknown`, the values a `defect_type` can take: the bound of a counter per type."""
        from kanoclip.knowledge.type_text import class_types

        examples = examples or self.examples
        if not (listed or self.listed) and cls not in self._shipped:
            self._shipped[cls] = class_types(cls)  # read from the shipped files once per class
        base = list(listed or self.listed or self._shipped[cls])
        return base + [t for t in (examples.types if examples else []) if t not in base]

    def text(self, model: KAnoCLIP, cls: str, types: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        from kanoclip.knowledge.type_text import type_text

        key = (cls, tuple(types))
        if key not in self._text:
            self._text[key] = type_text(model, cls, types)
        return self._text[key]

    def classify(
        self,
        model: KAnoCLIP,
        cls: str,
        regions: torch.Tensor,
        levels: Sequence[int],
        listed: Sequence[str] | None = None,
    ) -> list[TypedDefect]:
        """Per-level region features (B, L, D) -> each image's type (the formulas: `model.defect_typing`). The
        examples are read once: a swap meanwhile (`use`) is seen by the next call, never half by this one."""
        examples = self.examples
        types = self.types_for(cls, listed, examples)
        embeddings, _ = self.text(model, cls, types)
        region = pool_levels(regions.float().cpu(), levels)  # (B, D)
        p_text = type_probabilities(region, embeddings, self.temperature)
        p_examples = None
        if examples is not None and examples.examples:
            names, prototypes = examples.prototypes(levels)
            columns = [types.index(n) for n in names]
            p_examples = example_probabilities(region, prototypes, columns, len(types), self.temperature)
        p = combined_probabilities(p_text, p_examples, self.weight)
        return [self.decide(types, row) for row in p]

    def decide(self, types: list[str], p: torch.Tensor) -> TypedDefect:
        best = int(p.argmax())
        chance = float(p[best])
        named = types[best] if chance >= self.min_p else UNKNOWN_TYPE
        return TypedDefect(named, chance, {t: float(v) for t, v in zip(types, p, strict=True)})

    # -- what the Detector asks of it -----------------------------------------------------------------------------
    def judged(
        self, det: Detector, pixels: torch.Tensor, scores: torch.Tensor, maps: torch.Tensor
    ) -> list[TypedDefect | None]:
        """A batch's types: for each image judged anomalous (score >= the image threshold, score and map finite), None
        for the rest, and for all without a threshold (no image is judged then)."""
        typed: list[TypedDefect | None] = [None] * len(scores)
        t = det.thresholds.image_threshold
        if t is None:
            return typed
        finite = torch.isfinite(maps.flatten(1)).all(dim=1).tolist()
        judged = [i for i, s in enumerate(scores.tolist()) if math.isfinite(s) and s >= t and finite[i]]
        if judged:
            regions = self.regions(det, pixels[judged], maps[judged])
            for i, kind in zip(
                judged, self.classify(det.model, det.type_class, regions, det.map_levels()), strict=True
            ):
                typed[i] = kind
        return typed

    def type_images(
        self,
        det: Detector,
        images: Sequence[ImageLike],
        maps: Sequence[NDArray[np.floating]] | None,
        types: Sequence[str] | None,
    ) -> list[TypedDefect]:
        """`Detector.type_defects`: images in batches, each region weighted by its given map (resized to the run
        size) or by the detector's own."""
        from kanoclip.inference.detector import to_tensor

        out: list[TypedDefect] = []
        size = (det.image_size, det.image_size)
        for start in range(0, len(images), det.batch_size):
            arrays = [decode(image, limits=det.limits) for image in images[start : start + det.batch_size]]
            pixels = torch.stack([to_tensor(a, det.image_size) for a in arrays])
            if maps is None:
                batch_maps = det.raw_forward(pixels)[1]
            else:
                given = [
                    torch.as_tensor(np.asarray(m, np.float32))[None, None] for m in maps[start : start + len(arrays)]
                ]
                batch_maps = torch.cat(
                    [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in given]
                )[:, 0]
            regions = self.regions(det, pixels, batch_maps)
            out += self.classify(det.model, det.type_class, regions, det.map_levels(), types)
        return out

    def regions(self, det: Detector, pixels: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Per-level region features (B, L, D) of images at the run size, their patches weighted by the maps."""
        taps = self.taps(det, pixels)
        return region_features(taps, region_weights(maps, math.isqrt(taps.shape[2])))

    def taps(self, det: Detector, pixels: torch.Tensor) -> torch.Tensor:
        """Images at the run size (B, 3, S, S) -> unit CLIP-VV patch features (B, L, N, D), every tap level."""
        levels = cast(TorchBackend, det.backend).reference_features(pixels)  # L x (B * N, D)
        return torch.stack([level.view(len(pixels), -1, level.shape[-1]) for level in levels], dim=1)

    def identity(self, det: Detector) -> dict[str, Any]:
        """What examples must have been encoded with to be used: the frozen features' model, not a checkpoint's
        learned parts (a profile keeps its examples across adapted versions of one backbone)."""
        identity = cast(TorchBackend, det.backend).reference_identity()
        identity.pop("checkpoint_sha256", None)
        return identity

    def use(self, det: Detector, examples: TypePrototypes | None) -> None:
        if examples is not None:
            examples.check(self.identity(det))
        self.examples = examples

    def encode(self, det: Detector, examples: Sequence[DefectExample]) -> TypePrototypes:
        """`Detector.encode_defect_examples`: each example's region is its mask's, else its anomaly map's as the
        detector scores it now; an image held already (same sha256) takes its new type."""
        from kanoclip.inference.detector import _sha256, to_tensor

        names = [check_type_name(e.type) for e in examples]  # before any model runs
        rows: list[dict[str, Any]] = []
        features = []
        for start in range(0, len(examples), det.batch_size):
            batch = examples[start : start + det.batch_size]
            arrays = [decode(e.image, limits=det.limits) for e in batch]
            masks = [
                None if e.mask is None else mask_array(e.mask, a.shape[:2], source_name(e.image))
                for e, a in zip(batch, arrays, strict=True)
            ]
            pixels = torch.stack([to_tensor(a, det.image_size) for a in arrays])
            maps = det.raw_forward(pixels)[1] if any(m is None for m in masks) else None
            taps = self.taps(det, pixels)
            grid = math.isqrt(taps.shape[2])
            weights = [
                mask_weights(torch.from_numpy(m)[None], grid)
                if m is not None
                else region_weights(maps[i : i + 1], grid)  # type: ignore[index]
                for i, m in enumerate(masks)
            ]
            features.append(region_features(taps, torch.cat(weights)))
            rows += [
                {"type": n, "path": source_name(e.image), "sha256": _sha256(e.image, a), "mask": m is not None}
                for n, e, a, m in zip(names[start:], batch, arrays, masks, strict=False)
            ]
        current = self.examples or TypePrototypes(torch.zeros(0), (), self.identity(det))
        return current.extended(torch.cat(features), rows) if rows else current

    def describe(self, cls: str | None = None) -> dict[str, Any]:
        """What typing runs with, as run.json records it."""
        return {
            "types": self.types_for(cls) if cls is not None else self.listed or "the class's shipped types",
            "listed": bool(self.listed),
            "temperature": self.temperature,
            "example_weight": self.weight,
            "min_p": self.min_p,
            "examples": self.examples.describe() if self.examples else None,
            "typed": "images judged anomalous (score >= the image threshold); none without a threshold",
        }
