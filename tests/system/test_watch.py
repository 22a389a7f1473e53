"""`kanoclip watch`: hot folders, videos and streams into the station's history, exactly once; sinks; bad input.
Every server here (MJPEG camera, webhook receiver) listens on 127.0.0.1 and stops with its test."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from kanoclip.station import db
from tests.support.serving import TINY_FLAGS
from tests.support.watch import bottles, station_at, wait_for


def _watch_process(inbox: Path, state: Path, *flags: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kanoclip",
            "watch",
            str(inbox),
            "--state",
            str(state),
            *TINY_FLAGS,
            "--quiet",
            "--settle-s",
            "0.2",
            "--claim-timeout-s",
            "3",
            *flags,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _recorded(state: Path) -> list[str]:
    if not (state / db.DATABASE_FILE).is_file():
        return []
    engine = db.connect(db.database_url(state), upgrade=False)
    try:
        with engine.connect() as c:
            if db.current_revision(engine) != db.head_revision():
                return []
            return [row.source for row in c.execute(select(db.results.c.source))]
    finally:
        engine.dispose()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.slow
def test_a_watcher_killed_with_sigkill_and_restarted_scores_each_file_exactly_once(
    tmp_path: Path, shared_data: Path
) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    images = bottles(shared_data, 20)
    for i, p in enumerate(images):
        shutil.copy(p, inbox / f"{i:02d}.png")
    first = _watch_process(inbox, state, "--class-name", "bottle")
    try:
        wait_for(lambda: len(_recorded(state)) >= 5, timeout=120, what="a few results before the kill")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        _stop(first)
    partial = len(_recorded(state))
    assert partial < 20, "the kill came too late to test anything"
    second = _watch_process(inbox, state)
    try:
        wait_for(lambda: len(_recorded(state)) >= 20, timeout=120, what="every file after the restart")
        time.sleep(4)  # past the claim timeout: a file scored twice would show now
    finally:
        _stop(second)
    sources = _recorded(state)
    assert sorted(Path(s).name for s in sources) == [f"{i:02d}.png" for i in range(20)], sources


@pytest.mark.slow
def test_two_watchers_on_one_database_never_score_a_file_twice(tmp_path: Path, shared_data: Path) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    station_at(state).engine.dispose()  # type: ignore[union-attr]  # the profile exists before both start
    a, b = _watch_process(inbox, state), _watch_process(inbox, state)
    try:
        time.sleep(8)  # both watching
        images = bottles(shared_data, 20)
        for i, p in enumerate(images):
            shutil.copy(p, inbox / f"{i:02d}.png")
            time.sleep(0.05)
        wait_for(lambda: len(_recorded(state)) >= 20, timeout=120, what="20 results")
        time.sleep(4)
    finally:
        _stop(a)
        _stop(b)
    sources = _recorded(state)
    assert sorted(Path(s).name for s in sources) == [f"{i:02d}.png" for i in range(20)], sources
    engine = db.connect(db.database_url(state), upgrade=False)
    with engine.connect() as c:
        instances = {row.instance for row in c.execute(select(db.results.c.instance))}
    engine.dispose()
    print(f"results by {len(instances)} watcher(s)")
