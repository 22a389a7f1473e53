"""One run per output folder: an interrupted detect resumes without recomputing, another run is never mixed in, the
output folder is not scored as an input, link loops end, and a full disk says so with its own exit code."""

from __future__ import annotations

import csv
import errno
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kanoclip.cli import EXIT_DISK_FULL, main
from kanoclip.data.inputs import expand_inputs
from kanoclip.inference import outputs

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]


def rows_of(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "scores.csv").read_text().splitlines()))


def copies(shared_data: Path, folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True)
    for p in sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("test/*/*.jpg"))[:n]:
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    return folder


@pytest.mark.slow
def test_a_killed_detect_resumes_without_recomputing_what_it_finished(shared_data: Path, tmp_path: Path) -> None:
    folder = copies(shared_data, tmp_path / "in", 23)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "kanoclip", "detect", str(folder), "--out", str(out), *TINY_FLAGS]
    command += ["--batch-size", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out / "scores.csv.partial"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if partial.is_file() and len(partial.read_text().splitlines()) >= 5:  # header + 4 rows
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    finished = list(csv.DictReader(partial.read_text().splitlines()))
    finished = [r for r in finished if r.get("map")]
    assert 4 <= len(finished) < 23
    before = {r["map"]: (out / r["map"]).stat().st_mtime_ns for r in finished}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(finished)} already scored" in done.stdout
    assert {m: (out / m).stat().st_mtime_ns for m in before} == before  # nothing finished was computed again
    rows = rows_of(out)
    assert [r["path"] for r in rows] == sorted(str(p) for p in folder.iterdir())  # each once, in input order
    assert not partial.exists()


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
