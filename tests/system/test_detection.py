"""Detector and `kanoclip detect`: the fast path equals the plain model, every input kind, bad files, outputs."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]


@pytest.mark.slow
def test_decoding_workers_die_with_a_detect_killed_by_sigkill(tmp_path: Path) -> None:
    """A SIGKILLed `detect` once left its DataLoader workers running (1.2 GB each): a worker blocked on sending a
    large decoded image to a parent that no longer reads never returns to torch's own parent check."""
    folder = tmp_path / "in"
    folder.mkdir()
    ramp = np.broadcast_to(np.arange(1600, dtype=np.uint16)[None, :, None] % 256, (1600, 1600, 3)).astype(np.uint8)
    for i in range(40):
        Image.fromarray(np.roll(ramp, i, axis=1)).save(folder / f"{i:03d}.png", compress_level=1)
    flags = [f for f in TINY_FLAGS if f not in ("--workers", "0")]
    out = tmp_path / "out"
    script = "import sys; from kanoclip.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", script, "detect", str(folder), "--out", str(out), *flags, "--workers", "2"]
    command += ["--batch-size", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        partial = out / "scores.csv.partial"
        wait_until(lambda: partial.is_file() and partial.read_text().count("\n") > 3, 120, "detect to score images")
        workers = children_of(proc.pid)
        assert len(workers) == 2, workers
    finally:
        proc.kill()
        proc.wait()
    wait_until(lambda: not any(alive(pid) for pid in workers), 30, "the workers to exit")


def children_of(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its (dead) parent to be reaped by init."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Event-based wait: poll the condition, fail with a message if it does not come within the bound."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
