"""Exactly once across processes (#30, findings 2 and 3): two `kanoclip watch --server` on one folder through one
`kanoclip serve` record 6 files as 6 rows; a SIGTERM'd watcher exits 0 and its files are taken by the next start
within seconds, not after the 300 s claim timeout."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.serving import TINY_FLAGS, serve_process
from tests.support.watch import bottles, wait_for
from tests.system.test_watch import _recorded, _stop


def _watch(inbox: Path, *flags: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "kanoclip", "watch", str(inbox), "--quiet", "--settle-s", "0.2", *flags]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _fill(inbox: Path, shared_data: Path, n: int) -> None:
    inbox.mkdir()
    for i, p in enumerate(bottles(shared_data, n)):
        shutil.copy(p, inbox / f"{i:02d}.png")


@pytest.mark.slow
def test_two_watch_server_on_one_folder_through_one_server_record_6_files_as_6_rows(
    tmp_path: Path, shared_data: Path
) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    _fill(inbox, shared_data, 6)
    with serve_process("--state", str(state)) as (_, url):
        a, b = _watch(inbox, "--server", url), _watch(inbox, "--server", url)
        try:
            wait_for(lambda: len(_recorded(state)) >= 6, timeout=120, what="6 results")
            time.sleep(4)  # both watchers have posted every file by now
        finally:
            _stop(a)
            _stop(b)
        answered = httpx.get(f"{url}/v1/results", params={"limit": 100}).json()["results"]
    assert sorted(Path(r["source"]).name for r in answered) == [f"{i:02d}.png" for i in range(6)]


@pytest.mark.slow
def test_a_sigtermed_watcher_exits_0_and_the_next_start_takes_its_files_within_seconds(
    tmp_path: Path, shared_data: Path
) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    _fill(inbox, shared_data, 12)
    flags = ("--state", str(state), *TINY_FLAGS, "--claim-timeout-s", "300", "--batch-size", "1")
    first = _watch(inbox, *flags, "--class-name", "bottle")
    try:
        wait_for(lambda: len(_recorded(state)) >= 2, timeout=120, what="a few results before SIGTERM")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0
    finally:
        _stop(first)
    assert len(_recorded(state)) < 12, "SIGTERM came too late to test anything"
    second = _watch(inbox, *flags)
    try:
        wait_for(lambda: len(_recorded(state)) >= 12, timeout=180, what="every file after the restart")
    finally:
        _stop(second)
    assert sorted(Path(s).name for s in _recorded(state)) == [f"{i:02d}.png" for i in range(12)]
