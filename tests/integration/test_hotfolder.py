"""`kanoclip watch`: hot folders, videos and streams into the station's history, exactly once; sinks; bad input.
Every server here (MJPEG camera, webhook receiver) listens on 127.0.0.1 and stops with its test."""

from __future__ import annotations

import time
from pathlib import Path

from kanoclip.station.watch.hotfolder import HotFolder
from tests.support.watch import bottles


def test_a_file_that_arrives_before_the_observer_runs_is_neither_missed_nor_skipped(
    tmp_path: Path, shared_data: Path
) -> None:
    """A watcher is built (the folder listed), then started: a file written in between must still be scored."""
    data = bottles(shared_data, 1)[0].read_bytes()
    for existing in ("score", "skip"):
        inbox = tmp_path / existing
        inbox.mkdir()
        (inbox / "before.png").write_bytes(data)
        hot = HotFolder(inbox, settle_s=0.2, max_wait_s=30, poll=False, existing=existing)
        (inbox / "between.png").write_bytes(data)
        hot.start()
        try:
            found: list[str] = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(found) < 2:
                found += [p.name for p in hot.ready()[0]]
                time.sleep(0.05)
        finally:
            hot.stop()
        assert sorted(found) == (["before.png", "between.png"] if existing == "score" else ["between.png"]), existing
