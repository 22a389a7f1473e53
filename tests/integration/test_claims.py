"""Exactly once by compare-and-set (#30, findings 1-4 and 13): only the holder of a claim records it, every watcher
holds its claims under its own id (through one server too), a stopping watcher releases what it holds (SIGTERM
like Ctrl-C), claims and events go with the results retention prunes, and a row records the thresholds and bank
its forward pass used. SQLite, in-process."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from kanoclip.inference.thresholds import Thresholds
from kanoclip.station import db
from kanoclip.station.serve import ServeConfig
from kanoclip.station.station import Station
from kanoclip.station.watch.watcher import Item, LocalScorer, RemoteScorer, Scorer, WatchConfig, Watcher, file_key
from tests.support.serving import running_server
from tests.support.station import files, ok, probes, station_client
from tests.support.watch import bottles, station_at, wait_for

FAST = {"settle_s": 0.2, "progress": False, "claim_timeout_s": 300.0}


def rows(station: Station) -> list[dict[str, Any]]:
    return list(station.iter_results())[::-1]


def claims(station: Station) -> list[Any]:
    assert station.engine is not None
    with station.engine.connect() as c:
        return list(c.execute(select(db.claims)))


def item(path: Path) -> Item:
    data = path.read_bytes()
    return Item(str(path), data, key=file_key("default", path, data), path=path)


def inbox_of(tmp_path: Path, shared_data: Path, n: int) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i, p in enumerate(bottles(shared_data, n)):
        shutil.copy(p, inbox / f"{i:02d}.png")
    return inbox


def run_in_thread(watcher: Watcher, until: Callable[[], bool]) -> threading.Thread:
    thread = threading.Thread(target=watcher.run, kwargs={"until": until}, daemon=True)
    thread.start()
    return thread


# -- finding 1: completing a claim checks who holds it ---------------------------------------------------------------
def test_a_watcher_whose_claim_was_taken_over_records_nothing_and_the_file_is_recorded_once(
    tmp_path: Path, shared_data: Path
) -> None:
    station = station_at(tmp_path / "state")
    first, second = LocalScorer(station, "default"), LocalScorer(station, "default")
    part = item(bottles(shared_data, 1)[0])
    assert part.key is not None
    assert first.claim(part.key, part.source, 300.0)[0] == "mine"
    assert second.claim(part.key, part.source, 0.0)[0] == "mine"  # expired (timeout 0 s): taken over
    late = first.score([part])[0]  # the first watcher comes back from a long stall
    taken = second.score([item(Path(part.source))])[0]
    assert [r["id"] for r in rows(station)] == [taken["id"]]
    assert late.get("busy") and late["id"] is None
    assert station.claimed_result(part.key)["id"] == taken["id"]  # type: ignore[index]


def test_a_detect_whose_claim_is_taken_over_while_it_scores_is_409_and_records_nothing(
    tmp_path: Path, shared_data: Path
) -> None:
    image = probes(shared_data)[0]
    key = "ab" * 32
    with station_client(tmp_path / "state") as c:
        station: Station = c.app.state.station  # type: ignore[attr-defined]
        record = station.record

        def taken_over_first(*args: Any, **kwargs: Any) -> None:
            assert station.claim("default", key, "x.png", 0.0, "another-watcher") == "mine"
            record(*args, **kwargs)

        station.record = taken_over_first  # type: ignore[method-assign]
        answer = c.post("/v1/profiles/default/detect", params={"source_key": key, "holder": "me"}, files=files([image]))
        station.record = record  # type: ignore[method-assign]
        assert answer.status_code == 409, answer.text
        assert ok(c.get("/v1/results"))["results"] == []


# -- finding 2: every watcher claims under its own holder id, through one server too ---------------------------------
def test_two_watchers_on_one_folder_through_one_server_record_6_files_as_6_rows(
    tmp_path: Path, shared_data: Path
) -> None:
    inbox = inbox_of(tmp_path, shared_data, 6)
    station = station_at(tmp_path / "state")
    record = station.record

    def slow_record(*args: Any, **kwargs: Any) -> None:  # both watchers' requests overlap between claim and record
        time.sleep(0.3)
        record(*args, **kwargs)

    station.record = slow_record  # type: ignore[method-assign]
    with running_server(station, ServeConfig()) as url:
        watchers = [Watcher(RemoteScorer(url, "default", None, 300.0), [str(inbox)], WatchConfig(**FAST)) for _ in "ab"]
        done = threading.Event()
        threads = [run_in_thread(w, done.is_set) for w in watchers]
        try:
            wait_for(lambda: len(rows(station)) >= 6, timeout=120, what="6 results")
            time.sleep(2.0)  # a second row for a file would land by now
        finally:
            done.set()
            for t in threads:
                t.join(timeout=30)
    sources = sorted(Path(r["source"]).name for r in rows(station))
    assert sources == [f"{i:02d}.png" for i in range(6)], sources


# -- finding 3: a stopping watcher releases what it holds; SIGTERM stops it like Ctrl-C ------------------------------
def slowed(scorer: LocalScorer, seconds: float) -> LocalScorer:
    score = scorer.score

    def slow(items: list[Item]) -> list[dict[str, Any]]:
        time.sleep(seconds)
        return score(items)

    scorer.score = slow  # type: ignore[method-assign]
    return scorer


def unfinished(station: Station) -> list[Any]:
    return [c for c in claims(station) if c.result_id is None]


def test_a_watcher_stopped_while_files_wait_releases_their_claims(tmp_path: Path, shared_data: Path) -> None:
    inbox = inbox_of(tmp_path, shared_data, 6)
    station = station_at(tmp_path / "state")
    watcher = Watcher(slowed(LocalScorer(station, "default"), 0.5), [str(inbox)], WatchConfig(**FAST, batch=1))
    counts = watcher.run(until=lambda: len(claims(station)) == 6 and watcher.counts["scored"] >= 1)
    assert 1 <= counts["scored"] < 6
    assert unfinished(station) == []  # the next start takes the other files now, not in 300 s
    again = LocalScorer(station, "default")
    left = [item(p) for p in sorted(inbox.iterdir())]
    assert [again.claim(i.key, i.source, 300.0)[0] for i in left if i.key].count("mine") == 6 - counts["scored"]


def test_sigterm_stops_a_watcher_like_ctrl_c_and_releases_its_claims(tmp_path: Path, shared_data: Path) -> None:
    inbox = inbox_of(tmp_path, shared_data, 6)
    station = station_at(tmp_path / "state")

    def not_the_watcher(*_: Any) -> None:
        raise RuntimeError("SIGTERM reached the test, not the watcher")

    before = signal.signal(signal.SIGTERM, not_the_watcher)
    try:
        watcher = Watcher(slowed(LocalScorer(station, "default"), 0.5), [str(inbox)], WatchConfig(**FAST, batch=1))

        def terminate() -> None:
            wait_for(lambda: len(claims(station)) == 6 and watcher.counts["scored"] >= 1, what="claims held")
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=terminate, daemon=True).start()
        started = time.monotonic()
        counts = watcher.run()  # the main thread: as `kanoclip watch` runs it
        assert time.monotonic() - started < 30 and 1 <= counts["scored"] < 6
        assert signal.getsignal(signal.SIGTERM) is not_the_watcher  # put back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert unfinished(station) == []


def test_a_watch_server_client_releases_its_claims_on_the_server(tmp_path: Path, shared_data: Path) -> None:
    station = station_at(tmp_path / "state")
    with running_server(station, ServeConfig()) as url:
        scorer: Scorer = RemoteScorer(url, "default", None, 300.0)
        held = RemoteScorer(url, "default", None, 300.0)
        for i, key in enumerate(("a" * 64, "b" * 64)):
            station.claim("default", key, f"{i}.png", 300.0, held.holder)
        assert scorer.release() == 0 and held.release() == 2
    assert claims(station) == []


# -- finding 4: claims and events are pruned with the results ---------------------------------------------------------
def test_retention_prunes_the_claims_and_events_of_pruned_results(tmp_path: Path, shared_data: Path) -> None:
    station = station_at(tmp_path / "state")
    scorer = LocalScorer(station, "default")
    parts = [item(p) for p in bottles(shared_data, 4)]
    for part in parts:
        assert part.key is not None and scorer.claim(part.key, part.source, 300.0)[0] == "mine"
    scorer.score(parts[:3])  # the fourth stays claimed, never finished
    station.event("default", "cam", "stream_gap", "no frames for 2.0 s")
    old = time.time() - 10 * 86400
    assert station.engine is not None
    with station.engine.begin() as c:
        c.execute(update(db.results).values(created_at=old))
        c.execute(update(db.claims).values(claimed_at=old))
        c.execute(update(db.events).values(created_at=old))
    fresh = "f" * 64
    assert scorer.claim(fresh, "new.png", 300.0)[0] == "mine"  # held now: kept
    station.event("default", "cam", "stream_gap", "just now")
    assert station.prune(keep_days=1, max_store_bytes=None, step=2) == 3
    assert [c.key for c in claims(station)] == [fresh]
    assert [e["detail"] for e in station.events()] == ["just now"]
    assert parts[0].key is not None and scorer.claim(parts[0].key, parts[0].source, 300.0)[0] == "mine"

    scorer.score([item(Path(parts[0].source))])
    assert station.prune(keep_days=None, max_store_bytes=0) == 1  # by bytes: its claim goes with it
    assert [c.key for c in claims(station)] == [fresh]


# -- finding 13: a row records what its forward pass used ------------------------------------------------------------
class OtherBank:
    """A bank swapped in after the forward pass (as a verdict's rebuild does)."""

    id, images, sources = "0123456789abcdef", 1, []

    def describe(self) -> dict[str, Any]:
        return {"id": self.id}


def test_a_row_records_the_threshold_and_bank_its_forward_pass_used(tmp_path: Path, shared_data: Path) -> None:
    station = station_at(tmp_path / "state")
    station.set_thresholds("default", Thresholds(0.5))
    scorer = LocalScorer(station, "default")
    det = scorer.detector
    predict_many = det.predict_many

    def then_calibrated(arrays: Any) -> Any:  # a calibrate and a bank change land between forward and record
        predicted = predict_many(arrays)
        station.set_thresholds("default", Thresholds(0.99))
        det.references = OtherBank()  # type: ignore[assignment]
        return predicted

    det.predict_many = then_calibrated  # type: ignore[method-assign]
    path = bottles(shared_data, 1)[0]
    answer = scorer.score([Item(str(path), path.read_bytes())])[0]
    row = rows(station)[0]
    assert row["image_threshold"] == 0.5 and row["bank_id"] is None
    assert row["label"] == answer["label"] == int(answer["score"] > 0.5)


def test_a_detect_row_records_the_threshold_its_forward_pass_used(tmp_path: Path, shared_data: Path) -> None:
    with station_client(tmp_path / "state") as c:
        station: Station = c.app.state.station  # type: ignore[attr-defined]
        station.set_thresholds("default", Thresholds(0.5))
        record = station.record

        def calibrated_first(*args: Any, **kwargs: Any) -> None:
            station.set_thresholds("default", Thresholds(0.99))
            record(*args, **kwargs)

        station.record = calibrated_first  # type: ignore[method-assign]
        answer = ok(c.post("/v1/detect", files=files(probes(shared_data)[:1])))["results"][0]
        row = ok(c.get(f"/v1/results/{answer['result_id']}"))
    assert row["image_threshold"] == 0.5 and row["label"] == answer["label"]


@pytest.fixture(autouse=True)
def _no_stray_sigterm_handler() -> Any:
    before = signal.getsignal(signal.SIGTERM)
    yield
    assert signal.getsignal(signal.SIGTERM) is before
