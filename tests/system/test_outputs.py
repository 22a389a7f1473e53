"""One run per output folder: an interrupted detect resumes without recomputing, another run is never mixed in, the
output folder is not scored as an input, link loops end, and a full disk says so with its own exit code."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.outputs import copies, rows_of

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]


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
