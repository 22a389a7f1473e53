"""What a user meets before any image: the command starts fast, says its version, and the test data is found."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import kanoclip
from tests.support.packaging import ROOT, run_python


@pytest.mark.slow
def test_the_public_api_loads_lazily_and_completely() -> None:
    for name in kanoclip.__all__:
        assert getattr(kanoclip, name) is not None
    result = run_python("import kanoclip, sys; kanoclip.Detector; assert 'torch' in sys.modules")
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_missing_test_data_is_one_message_with_the_sources(tmp_path: Path) -> None:
    where = "unit/evaluation/test_evaluation.py"  # moved there from tests/ with the tiers
    target = f"{ROOT / 'tests' / where}::test_masks_are_resized_as_the_reference_pipeline_does_on_real_masks"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{target}[112]"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "KANOCLIP_TEST_DATA": str(tmp_path / "nowhere")},
    )
    assert result.returncode == 1
    assert "KANOCLIP_TEST_DATA" in result.stdout and "KolektorSDD v1" in result.stdout
    assert "Traceback" not in result.stdout
