"""Input expansion (data.inputs): a glob through a link loop ends and finds each file once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kanoclip.data.inputs import expand_inputs
from tests.support.outputs import copies


@pytest.mark.timeout(30)  # it once ran for minutes
def test_a_glob_through_a_link_loop_ends_and_finds_each_file_once(shared_data: Path, tmp_path: Path) -> None:
    """`detect 'in/**/*.png'` once walked a symbolic link loop: 700k paths in 2 minutes, nothing scored."""
    folder = copies(shared_data, tmp_path / "in", 2)
    (folder / "sub").mkdir()
    shutil.copy(next(folder.glob("*.jpg")), folder / "sub" / "x.jpg")
    (folder / "sub" / "loop").symlink_to(folder)
    (folder / "again").symlink_to(folder / "sub")
    paths, _ = expand_inputs([f"{folder}/**/*.jpg"])
    assert sorted(p.name for p in paths) == sorted([*(p.name for p in folder.glob("*.jpg")), "x.jpg"])
