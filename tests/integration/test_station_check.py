"""`kanoclip station check` (#30): a state's rows against its files; `--fix` removes orphans past the put grace."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from kanoclip.cli import main
from tests.support.station import files, ok, probes, station_client


def test_check_finds_missing_and_orphan_files_and_fix_removes_only_old_orphans(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    with station_client(state) as c:
        rows = ok(c.post("/v1/detect", files=files(probes(shared_data)[:2])))["results"]
    capsys.readouterr()
    assert main(["station", "check", str(state)]) == 0
    assert "0 missing file(s), 0 orphan file(s)" in capsys.readouterr().out

    blobs = state / "blobs"
    old, fresh = (hashlib.sha256(x).hexdigest() for x in (b"left by a crash", b"a request in flight"))
    for sha in (old, fresh):
        (blobs / sha[:2]).mkdir(exist_ok=True)
        (blobs / sha[:2] / sha).write_bytes(b"x")
    then = time.time() - 3600
    os.utime(blobs / old[:2] / old, (then, then))
    lost = next(p for p in blobs.rglob("*") if p.is_file() and p.name not in (old, fresh))
    lost.unlink()  # a file a row names, gone
    assert main(["station", "check", str(state)]) == 1
    out, err = capsys.readouterr()
    assert "1 missing file(s), 2 orphan file(s), 0 removed" in out and f"{lost.name[:16]}" in err
    assert any(f"result {r['result_id']}" in err for r in rows)
    assert main(["station", "check", str(state), "--fix"]) == 1  # a missing file cannot be fixed
    assert "1 missing file(s), 2 orphan file(s), 1 removed" in capsys.readouterr().out
    assert not (blobs / old[:2] / old).exists() and (blobs / fresh[:2] / fresh).exists()


def test_check_on_a_garbage_database_is_one_line_and_leaves_it_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    garbage = state / "station.sqlite"
    garbage.write_bytes(b"not a database at all " * 100)
    before = hashlib.sha256(garbage.read_bytes()).hexdigest()
    assert main(["station", "check", str(state)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kanoclip: error:") and "station.sqlite" in err[0]
    assert hashlib.sha256(garbage.read_bytes()).hexdigest() == before


def test_a_backup_taken_under_load_opens_as_a_station_with_the_same_history(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A client keeps posting while `station backup` runs: the copy holds a consistent snapshot, each of its rows is
    one of the station's with the same fields, and `station check` finds every file it names."""
    import threading

    state, out = tmp_path / "state", tmp_path / "backup"
    stop = threading.Event()
    with station_client(state) as c:
        ok(c.post("/v1/detect", files=files(probes(shared_data))))

        def load() -> None:
            while not stop.is_set():
                ok(c.post("/v1/detect", files=files(probes(shared_data)[:1])))

        writer = threading.Thread(target=load)
        writer.start()
        try:
            assert main(["station", "backup", str(state), str(out)]) == 0
        finally:
            stop.set()
            writer.join(timeout=60)
        original = {r["id"]: r for r in ok(c.get("/v1/results", params={"limit": 1000}))["results"]}
    assert "0 file(s) pruned meanwhile" in capsys.readouterr().out
    assert main(["station", "check", str(out)]) == 0
    with station_client(out) as c:
        copied = ok(c.get("/v1/results", params={"limit": 1000}))["results"]
        assert copied and all(original[r["id"]] == r for r in copied)
        for r in copied:
            assert c.get(f"/v1/results/{r['id']}").status_code == 200
    assert main(["station", "backup", str(state), str(out)]) == 2  # never over an earlier backup
    assert "is not empty" in capsys.readouterr().err


def test_a_put_killed_before_its_rename_leaves_a_temporary_file_that_fix_removes_past_the_grace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kill -9 during a put leaves `.SHA.xxxxxxxx` (`atomic_write_bytes`' temporary file) in the store: no row
    names it and no put comes back for it, so `station check` counts it as an orphan and `--fix` removes it once
    past the grace (a put still writing it is left alone). Found by tests/system/test_fault_injection.py."""
    from kanoclip.station.station import Station
    from tests.support.station import base_run

    state = tmp_path / "state"
    station = Station.open(base_run(), state)
    assert station.engine is not None
    station.engine.dispose()
    old, fresh = (hashlib.sha256(x).hexdigest() for x in (b"killed mid-put", b"being written"))
    temporary = []
    for sha, suffix in ((old, "k9x_2a7q"), (fresh, "w1r3tm0p")):
        (state / "blobs" / sha[:2]).mkdir(exist_ok=True)
        temporary.append(state / "blobs" / sha[:2] / f".{sha}.{suffix}")
        temporary[-1].write_bytes(b"half a pa")
    then = time.time() - 3600
    os.utime(temporary[0], (then, then))
    assert main(["station", "check", str(state)]) == 1
    assert "0 missing file(s), 2 orphan file(s), 0 removed" in capsys.readouterr().out
    assert main(["station", "check", str(state), "--fix"]) == 1  # the fresh one is a put in flight
    assert "0 missing file(s), 2 orphan file(s), 1 removed" in capsys.readouterr().out
    assert not temporary[0].exists() and temporary[1].exists()
