"""Retention runs (#30, finding 5): `serve --keep-days` / `--max-store-gb` reach the server (the layout issue wired
them) and prune rows and their files at start and then periodically; every result left still answers 200."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import select

from kanoclip.station import db
from kanoclip.station.station import Station
from tests.support.station import files, ok, probes, station_client


def stored(state: Path) -> list[Path]:
    """The store's files (the database and its lock aside)."""
    return [p for p in state.rglob("*") if p.is_file() and not p.name.startswith("station.")]


def age(files: list[Path], seconds: float = 3600) -> None:
    """As if written `seconds` ago: a fresh file may belong to a request in flight, so retention leaves it."""
    then = time.time() - seconds
    for f in files:
        os.utime(f, (then, then))


def wait_for(condition, seconds: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "retention did not run"
        time.sleep(0.1)


def test_max_store_bytes_prunes_the_oldest_rows_and_their_files_and_the_rest_answer(
    tmp_path: Path, shared_data: Path
) -> None:
    state = tmp_path / "state"
    with station_client(state) as c:
        for image in probes(shared_data):
            ok(c.post("/v1/detect", files=files([image])))
        everything = ok(c.get("/v1/results", params={"limit": 1000}))["results"]
    before = stored(state)
    age(before)
    budget = sum(p.stat().st_size for p in before) // 2  # about half the results' files must go
    with station_client(state, max_store_bytes=budget) as c:
        wait_for(lambda: len(ok(c.get("/v1/results", params={"limit": 1000}))["results"]) < len(everything))
        left = ok(c.get("/v1/results", params={"limit": 1000}))["results"]
        assert left, "the budget holds some results"
        assert [r["id"] for r in left] == [r["id"] for r in everything][: len(left)]  # the oldest went first
        for row in left:
            assert c.get(f"/v1/results/{row['id']}").status_code == 200
    assert len(stored(state)) < len(before)


def test_keep_days_prunes_results_older_than_that(tmp_path: Path, shared_data: Path) -> None:
    state = tmp_path / "state"
    with station_client(state) as c:
        ok(c.post("/v1/detect", files=files(probes(shared_data)[:2])))
    time.sleep(0.2)
    with station_client(state, keep_days=0.1 / 86400) as c:  # 0.1 s
        wait_for(lambda: not ok(c.get("/v1/results"))["results"])


def test_retention_leaves_a_file_that_a_request_in_flight_has_just_put_again(tmp_path: Path, shared_data: Path) -> None:
    """Finding 6: a row is pruned while a new request with the same image has put its file but not yet committed
    its row; the file must still be there when that row commits."""
    from kanoclip.station.station import Station
    from tests.support.station import base_run

    state = tmp_path / "state"
    with station_client(state) as c:
        ok(c.post("/v1/detect", files=files(probes(shared_data)[:1])))
    age(stored(state))
    station = Station.open(base_run(), state, None)
    try:
        assert station.engine is not None
        image = probes(shared_data)[0].read_bytes()
        assert station.store is not None
        in_flight = station.store.put(image)  # the new request's put; its row is not committed yet
        assert station.prune(1e-9, None) == 1  # the old row goes, and it named the same image
        assert station.store.exists(in_flight)
        assert not station.store.delete_unneeded(in_flight)  # fresh: a row may be about to name it
        age([station.store.path(in_flight)])
        assert station.store.delete_unneeded(in_flight) and not station.store.exists(in_flight)
    finally:
        assert station.engine is not None
        station.engine.dispose()


def _bank_files(station: Station) -> set[str]:
    """The store's files that no result and no good part names: the profiles' bank files, current or retired."""
    assert station.engine is not None and station.store is not None
    with station.engine.connect() as c:
        named = {
            h
            for col in (db.results.c.image_sha256, db.results.c.overlay_sha256, db.results.c.map_sha256)
            for (h,) in c.execute(select(col))
            if h
        }
        named |= {h for (h,) in c.execute(select(db.references.c.sha256))}
    return {p.name for p in station.store.root.rglob("*") if p.is_file()} - named


def test_good_verdicts_keep_one_bank_file_not_one_per_verdict(tmp_path: Path, shared_data: Path) -> None:
    """Finding 7: each "good" verdict stored a new copy of the whole bank and kept the old ones (2.3 GB after 50
    verdicts, quadratic). A replaced bank file is retired: kept a few seconds (a reader of the old row finds it), then
    removed, so the store holds the parts and one bank file."""
    images = sorted((shared_data / "MVTec_AD/bottle/train/good").glob("*.png"))[:2] + probes(shared_data)
    with station_client(tmp_path / "state") as c:
        station = c.app.state.station  # type: ignore[attr-defined]
        ok(c.post("/v1/references", files=files(images[:2])))
        ids = [ok(c.post("/v1/detect", files=files([i])))["results"][0]["result_id"] for i in images[2:]]
        ok(c.post(f"/v1/results/{ids[0]}/feedback", json={"verdict": "good"}))
        assert len(_bank_files(station)) == 2  # the replaced one is within its grace: a reader may hold its name
        station.store.grace_s = 0.0  # the graces passed
        for rid in ids[1:]:
            ok(c.post(f"/v1/results/{rid}/feedback", json={"verdict": "good"}))
        ok(c.post(f"/v1/results/{ids[0]}/feedback", json={"verdict": "defect"}))
        current = station.profile("default").bank_sha256
        assert _bank_files(station) == {current}
        assert ok(c.get("/v1/references"))["images"] == 4


def test_files_an_earlier_process_left_unnamed_go_at_the_next_start(tmp_path: Path, shared_data: Path) -> None:
    """Found by the fault injection (#30): retention kept the unnamed files still inside their grace (retired banks,
    files put again) in memory only, so a restart or a kill left them for ever; a put killed before its rename left
    its temporary file. The next start sweeps both once they are past the grace."""
    state = tmp_path / "state"
    images = sorted((shared_data / "MVTec_AD/bottle/train/good").glob("*.png"))[:3]
    with station_client(state) as c:
        ok(c.post("/v1/references", files=files(images[:2])))
        ok(c.post("/v1/references", files=files(images[2:])))  # the first bank file is retired, within its grace
        station = c.app.state.station  # type: ignore[attr-defined]
        current = station.profile("default").bank_sha256
        named = {p.name for p in stored(state)} - set(_bank_files(station))
    assert len(_bank_files(station)) == 2
    unfinished = station.store.path(current).parent / f".{current}.abcd1234"
    unfinished.write_bytes(b"half a put")
    age([*stored(state), unfinished])
    with station_client(state) as c:
        station = c.app.state.station  # type: ignore[attr-defined]
        wait_for(lambda: _bank_files(station) == {current} and not unfinished.exists())
        assert ok(c.get("/v1/references"))["images"] == 3
    assert named <= {p.name for p in stored(state)}  # every named file is still there
