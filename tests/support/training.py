"""Helpers shared by the tiers of the former tests/test_training.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kanoclip.data.datasets.synthetic import generate

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    generate(root, size=64, train=0, good=2, per_defect=2, seed=1)  # 2 classes x 6 test images
    return root


def losses(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
