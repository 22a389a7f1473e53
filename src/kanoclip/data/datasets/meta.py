"""AnomalyCLIP's `meta.json`: read as a layout of its own, and written for any dataset kanoclip can read (SPEC §5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kanoclip._files import atomic_write_json
from kanoclip.data.datasets.base import DatasetIndex, Sample
from kanoclip.errors import DatasetError


def matches_meta(root: Path) -> bool:
    return (root / "meta.json").is_file()


def _sample(root: Path, entry: dict[str, Any]) -> Sample:
    try:
        mask = entry.get("mask_path") or None
        return Sample(
            root / entry["img_path"],
            int(entry["anomaly"]),
            entry["cls_name"],
            root / mask if mask else None,
            entry.get("specie_name", ""),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{root / 'meta.json'}: entry {entry} lacks img_path/cls_name/anomaly ({e})") from e


def load_meta(root: Path) -> DatasetIndex:
    try:
        meta = json.loads((root / "meta.json").read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{root / 'meta.json'} is not valid JSON: {e}") from e
    if "test" not in meta:
        raise DatasetError(
            f"{root / 'meta.json'} has no 'test' section (keys: {sorted(meta)}); "
            "AnomalyCLIP's DAGM generator writes 'Test': rename it to 'test'"
        )
    test = [_sample(root, e) for entries in meta["test"].values() for e in entries]
    train = [_sample(root, e) for entries in meta.get("train", {}).values() for e in entries]
    missing = [s.image for s in test if not s.image.is_file()]
    if missing:
        raise DatasetError(f"{root / 'meta.json'} lists {len(missing)} image(s) that do not exist, e.g. {missing[0]}")
    return DatasetIndex("meta", root, test, train)


def write_meta(index: DatasetIndex, path: str | Path | None = None) -> Path:
    """Write `meta.json` (paths relative to the dataset root) so that AnomalyCLIP-style code can read the dataset."""
    target = Path(path) if path else index.root / "meta.json"

    def entry(s: Sample) -> dict[str, Any]:
        rel = str(s.image.relative_to(index.root)) if s.image.is_relative_to(index.root) else str(s.image)
        mask = (
            ""
            if s.mask is None
            else (str(s.mask.relative_to(index.root)) if s.mask.is_relative_to(index.root) else str(s.mask))
        )
        return {"img_path": rel, "mask_path": mask, "cls_name": s.cls, "specie_name": s.defect, "anomaly": s.label}

    meta: dict[str, dict[str, list[dict[str, Any]]]] = {"train": {}, "test": {}}
    for split, samples in (("train", index.train), ("test", index.test)):
        for s in samples:
            meta[split].setdefault(s.cls, []).append(entry(s))
    atomic_write_json(target, meta, indent=2)
    return target
