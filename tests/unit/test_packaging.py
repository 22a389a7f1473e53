"""What a user meets before any image: the command starts fast, says its version, and the test data is found."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import kanoclip
from tests.support.packaging import ROOT


def test_the_package_is_typed_and_licensed() -> None:
    assert (Path(kanoclip.__file__).parent / "py.typed").is_file()
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert metadata.metadata("kanoclip")["License-Expression"] == "Apache-2.0"
