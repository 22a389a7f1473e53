"""What every layout loader returns: a list of samples per split, and a summary a person can check (SPEC §5)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kanoclip.data.images import Crop, crop_array, is_image_file, read_image, read_mask, resize_mask
from kanoclip.data.inputs import mask_stem
from kanoclip.errors import DatasetError

NORMAL_NAMES = ("good", "ok", "normal", "no", "negative")


@dataclass(frozen=True)
class Sample:
    """One image: its label (1 = anomalous), its mask if any, its class and defect type.

    `crop` (left, top, right, bottom) selects part of the file, for layouts that cut images (KolektorSDD thirds).
    """

    image: Path
    label: int
    cls: str
    mask: Path | None = None
    defect: str = ""
    crop: Crop | None = None


def sample_image(sample: Sample) -> np.ndarray:
    """The sample's pixels, (H, W, 3) uint8, cropped when the layout cuts the file."""
    return crop_array(read_image(sample.image), sample.crop)


def sample_mask(sample: Sample, size: int | None = None, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The sample's ground truth as bool, cropped like its image and resized to size x size as SPEC §3.1 says
    (bilinear, then > 0.5); all-False when it has no mask (then `shape` or `size` gives its extent)."""
    if sample.mask is None:
        extent = (size, size) if size is not None else shape
        if extent is None:
            raise ValueError("a sample without a mask needs a size or a shape")
        return np.zeros(extent, dtype=bool)
    mask = crop_array(read_mask(sample.mask), sample.crop)
    return resize_mask(mask, size) if size is not None else mask


@dataclass
class DatasetIndex:
    """A dataset found on disk: `test` is what zero-shot evaluation (and auxiliary training) reads."""

    name: str
    root: Path
    test: list[Sample]
    train: list[Sample] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sorted({s.cls for s in self.test})

    def by_class(self) -> dict[str, list[Sample]]:
        groups: dict[str, list[Sample]] = {}
        for sample in self.test:
            groups.setdefault(sample.cls, []).append(sample)
        return groups

    def summary(self) -> str:
        """One paragraph: what was found, so a wrong layout or a missing folder is seen before work starts."""
        labels = Counter(s.label for s in self.test)
        masks = sum(s.mask is not None for s in self.test)
        lines = [
            f"{self.name} layout at {self.root}: {len(self.classes)} class(es) {_short(self.classes)}",
            f"  test: {len(self.test)} images ({labels[0]} good, {labels[1]} defect), {masks} masks",
        ]
        if self.train:
            lines.append(f"  train: {len(self.train)} normal images")
        return "\n".join(lines)


def _short(names: list[str], limit: int = 8) -> str:
    return "[" + ", ".join(names[:limit]) + (", ..." if len(names) > limit else "") + "]"


def images_in(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files of a folder, sorted by name (the order AnomalyCLIP pairs images and masks by)."""
    if not folder.is_dir():
        return []
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if is_image_file(p))


def match_masks(images: list[Path], mask_dir: Path, where: str) -> list[Path]:
    """The mask of each image: same stem, optionally with `_mask`/`_label`/`_segmentation` after it; else, if the
    counts agree, sorted order. Anything else is an error that names the first image without a mask."""
    masks = images_in(mask_dir)
    by_stem: dict[str, Path] = {}
    for m in masks:
        by_stem[mask_stem(m.stem)] = m
    if all(i.stem in by_stem for i in images):
        return [by_stem[i.stem] for i in images]
    if len(masks) == len(images):
        return masks
    missing = next(i for i in images if i.stem not in by_stem)
    raise DatasetError(
        f"{where}: no mask for {missing.name} in {mask_dir} ({len(masks)} masks for {len(images)} "
        "images); masks must share the image's name (optionally with _mask)"
    )


def single_child_with(root: Path, names: tuple[str, ...]) -> Path:
    """`root` itself if it holds all `names`, else its only sub-folder that does (archives often nest one level)."""
    if all((root / n).exists() for n in names):
        return root
    children = [c for c in sorted(root.iterdir()) if c.is_dir() and all((c / n).exists() for n in names)]
    return children[0] if len(children) == 1 else root
