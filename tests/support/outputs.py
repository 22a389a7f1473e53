"""Helpers shared by the tiers of the former tests/test_outputs.py."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path


def rows_of(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "scores.csv").read_text().splitlines()))


def copies(shared_data: Path, folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True)
    for p in sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("test/*/*.jpg"))[:n]:
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    return folder
