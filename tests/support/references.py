"""Helpers shared by the tiers of the former tests/test_references.py."""

from __future__ import annotations

from pathlib import Path


def hazelnut(shared_data: Path, n: int = 1) -> list[Path]:
    return sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("train/good/*"))[:n]
