"""One run per output folder: an interrupted detect resumes without recomputing, another run is never mixed in, the
output folder is not scored as an input, link loops end, and a full disk says so with its own exit code."""

from __future__ import annotations

import csv
import errno
from pathlib import Path

import pytest

from kanoclip.cli import EXIT_DISK_FULL, main
from kanoclip.inference import outputs
from tests.support.outputs import copies, rows_of

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]


def test_another_run_in_the_same_folder_is_refused_or_replaced_whole(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = copies(shared_data, tmp_path / "in", 3)
    out = tmp_path / "out"
    assert main(["detect", str(folder), "--out", str(out), *TINY_FLAGS]) == 0
    (out / "notes.txt").write_text("mine")
    first = rows_of(out)
    assert main(["detect", str(folder), "--out", str(out), *TINY_FLAGS]) == 0  # the same run: nothing to do
    assert rows_of(out) == first
    capsys.readouterr()
    assert main(["detect", str(folder), "--out", str(out), "--threshold", "0.5", *TINY_FLAGS]) == 2
    assert "another run" in capsys.readouterr().err and rows_of(out) == first  # untouched
    assert main(["detect", str(folder), "--out", str(out), "--threshold", "0.5", "--overwrite", *TINY_FLAGS]) == 0
    assert all("label" in r for r in rows_of(out)) and (out / "notes.txt").read_text() == "mine"


def test_an_output_folder_inside_the_inputs_is_not_scored(shared_data: Path, tmp_path: Path) -> None:
    """Each rerun once scored its own overlays (3, 6, 9 rows)."""
    folder = copies(shared_data, tmp_path / "in", 3)
    for _ in range(3):
        assert main(["detect", str(folder), "--out", str(folder / "results"), *TINY_FLAGS]) == 0
        assert len(rows_of(folder / "results")) == 3


def test_a_full_disk_says_so_with_its_own_exit_code_and_keeps_what_was_finished(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = copies(shared_data, tmp_path / "in", 4)
    out = tmp_path / "out"
    real = outputs.atomic_write_bytes
    calls = {"n": 0}

    def fills_up(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] > 5:  # the partial file, then two images' map and overlay
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(outputs, "atomic_write_bytes", fills_up)
    assert main(["detect", str(folder), "--out", str(out), *TINY_FLAGS]) == EXIT_DISK_FULL
    assert "the disk is full" in capsys.readouterr().err
    finished = list(csv.DictReader((out / "scores.csv.partial").read_text().splitlines()))
    assert len(finished) == 2 and all((out / r["map"]).is_file() for r in finished)  # consistent
    monkeypatch.setattr(outputs, "atomic_write_bytes", real)
    assert main(["detect", str(folder), "--out", str(out), *TINY_FLAGS]) == 0  # space freed: it resumes
    assert len(rows_of(out)) == 4
