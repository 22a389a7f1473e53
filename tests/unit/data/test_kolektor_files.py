"""Loading KolektorSDD's thirds reads each image's size from its header and closes the file (it left one open file
per image, 147 ResourceWarnings in an `evaluate --layout kolektor-thirds`)."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

from kanoclip.data.datasets.industrial import load_kolektor_thirds


def test_loading_the_thirds_leaves_no_file_open(shared_data: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        index = load_kolektor_thirds(shared_data / "KolektorSDD")
        gc.collect()
    assert index.test  # it did load
    unclosed = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not unclosed, f"{len(unclosed)} file(s) left open, e.g. {unclosed[0].message}"
