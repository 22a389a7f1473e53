"""`--mqtt` against a real broker (#31): Debian's mosquitto, started by each test on 127.0.0.1 and stopped after
(`tests/support/mosquitto.py`), and a paho subscriber. One message per result, of the documented schema, on
`<topic>/<profile>`, the last one retained; results made while the broker is down arrive when it is back, also
across a restart of `serve`; the outbox's bound; a watcher's stop, and SIGTERM, leave every result at the broker."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from kanoclip.station import db
from kanoclip.station.sinks import mqtt
from kanoclip.station.sinks.config import SinkConfig
from kanoclip.station.sinks.message import SCHEMA
from tests.support.mosquitto import Subscriber, mosquitto, retained, subscribed
from tests.support.postgres import throwaway_cluster
from tests.support.serving import TINY_FLAGS
from tests.support.sinks import outbox_rules
from tests.support.station import files, ok, probes, station_client
from tests.support.watch import bottles, station_at, wait_for, watching

KEYS = {"schema", "profile", "id", "source", "score", "label", "verdict", "threshold", "time", "error"}
KEYS |= {"frame_index", "frame_time", "defect_type", "defect_type_p"}


@pytest.fixture(autouse=True)
def _quick_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mqtt, "RECONNECT_S", (1, 1))  # the broker back: found within a second


def _ids(sub: Subscriber) -> list[int]:
    """The results' ids as they arrived, each once (QoS 1 may deliver one twice around a broker restart)."""
    seen: list[int] = []
    for _, m, _ in sub.messages():
        if m["id"] not in seen:
            seen.append(m["id"])
    return seen


def _detect(c: Any, paths: list[Path]) -> list[int]:
    return [r["result_id"] for r in ok(c.post("/v1/detect", files=files(paths)))["results"]]


def _outbox(state: Path) -> list[int]:
    """The results whose messages wait in the state's outbox, oldest first."""
    engine = db.connect(db.database_url(state), upgrade=False)
    try:
        with engine.connect() as c:
            payloads = c.execute(select(db.sink_outbox.c.payload).order_by(db.sink_outbox.c.id)).scalars()
            return [json.loads(p)["id"] for p in payloads]
    finally:
        engine.dispose()


def test_serve_publishes_one_message_per_result_with_the_schema_and_the_broker_retains_the_last(
    tmp_path: Path, shared_data: Path
) -> None:
    with mosquitto() as broker, subscribed(broker, "plant/line1") as sub:
        sinks = SinkConfig(mqtt=broker.url("plant/line1"))
        with station_client(tmp_path / "state", sinks=sinks) as c:
            ok(c.patch("/v1/profiles/default", json={"class_name": "bottle"}))
            answer = ok(c.post("/v1/detect", files=files(probes(shared_data))))
            wait_for(lambda: len(sub.messages()) == 3, timeout=20, what="3 messages")
            last = retained(broker, "plant/line1/default")
            time.sleep(0.5)  # a fourth (a duplicate) would be here by now
        assert _outbox(tmp_path / "state") == []  # each acknowledged: its row went
    rows = {r["result_id"]: r for r in answer["results"]}
    received = sub.messages()
    assert len(received) == 3 and [m["id"] for _, m, _ in received] == list(rows)  # in order
    assert sub.qos == [1, 1, 1]  # published at QoS 1 (a subscriber at QoS 1 gets what was sent at 0 at 0)
    for topic, m, _ in received:
        assert topic == "plant/line1/default" and set(m) == KEYS and m["schema"] == SCHEMA
        assert m["profile"] == "default" and m["score"] == rows[m["id"]]["score"]
        assert m["source"] == rows[m["id"]]["filename"] and m["error"] is None
        assert (m["label"], m["verdict"], m["threshold"]) == (None, None, None)  # no threshold chosen yet
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", m["time"])
    assert last == received[-1][1]  # what a subscriber that comes later gets first: the last result


def test_results_made_while_the_broker_is_down_arrive_when_it_is_back_and_across_a_restart_of_serve(
    tmp_path: Path, shared_data: Path
) -> None:
    a, b, c3 = ([p] for p in probes(shared_data))
    state = tmp_path / "state"
    with mosquitto() as broker, subscribed(broker, "line") as sub:
        sinks = SinkConfig(mqtt=broker.url("line"))
        with station_client(state, sinks=sinks) as c:
            first = _detect(c, a)
            wait_for(lambda: _ids(sub) == first, timeout=20, what="the first message")
            broker.stop()
            down = _detect(c, b)  # answered, recorded and kept while the broker is down
            assert ok(c.get("/v1/results"))["results"][0]["id"] == down[0]
            wait_for(lambda: _outbox(state) == down, timeout=10, what="the message kept in the state")
            broker.start()
            wait_for(lambda: _ids(sub) == first + down, timeout=30, what="the kept message, the broker back")
            broker.stop()
            before_restart = _detect(c, c3)
            wait_for(lambda: _outbox(state) == before_restart, timeout=10, what="the message kept in the state")
        assert _outbox(state) == before_restart  # serve stopped with the broker down: kept for the next start
        broker.start()
        with station_client(state, sinks=sinks) as c:
            wait_for(lambda: len(_ids(sub)) == 3, timeout=30, what="the message kept across the restart")
            after = _detect(c, a)
            wait_for(lambda: len(_ids(sub)) == 4, timeout=20, what="a new message after it")
        assert _outbox(state) == []
    assert _ids(sub) == first + down + before_restart + after  # in the order they were made


def test_without_a_state_results_wait_in_memory_and_a_password_protected_broker_gets_them(
    tmp_path: Path, shared_data: Path
) -> None:
    from fastapi.testclient import TestClient

    from kanoclip.station.serve import ServeConfig, create_app
    from kanoclip.station.station import Station
    from tests.support.station import base_run

    def scores(sub: Subscriber) -> list[float]:  # no state: no ids; each result's score, once
        return list(dict.fromkeys(m["score"] for _, m, _ in sub.messages()))

    with mosquitto(users={"line1": "s3cret"}) as broker, subscribed(broker, "line", ("line1", "s3cret")) as sub:
        station = Station.open(base_run(), None)  # serve --no-state
        station.configure("default", base_run())
        sinks = SinkConfig(mqtt=f"mqtt://line1:s3cret@127.0.0.1:{broker.port}/line")
        with TestClient(create_app(station, ServeConfig(sinks=sinks)), base_url="http://127.0.0.1") as c:
            first = ok(c.post("/v1/detect", files=files(probes(shared_data)[:1])))["results"]
            wait_for(lambda: len(scores(sub)) == 1, timeout=20, what="the first message")
            broker.stop()
            down = ok(c.post("/v1/detect", files=files(probes(shared_data)[1:])))["results"]
            broker.start()
            wait_for(lambda: len(scores(sub)) == 3, timeout=30, what="the messages made while it was down")
    assert scores(sub) == [r["score"] for r in first + down]
    assert [m["source"] for _, m, _ in sub.messages()] == [r["filename"] for r in first + down]


def test_past_mqtt_queue_messages_the_oldest_are_dropped_as_events_and_the_newest_arrive(
    tmp_path: Path, shared_data: Path
) -> None:
    state = tmp_path / "state"
    with mosquitto() as broker:
        with subscribed(broker, "line", name="keeper"):
            pass  # a session the broker keeps: what it gets while this subscriber is away waits for it
        broker.stop()
        with station_client(state, sinks=SinkConfig(mqtt=broker.url("line"), mqtt_queue=2)) as c:
            made = _detect(c, probes(shared_data)) + _detect(c, probes(shared_data)[:1])
            wait_for(lambda: len(ok(c.get("/v1/events"))["events"]) == 2, timeout=20, what="two dropped messages")
            events = ok(c.get("/v1/events"))["events"]
            assert {e["kind"] for e in events} == {"mqtt_failed"}
            assert all("dropped: 2 messages were already waiting" in e["detail"] for e in events)
            assert sorted(e["source"] for e in events) == sorted(p.name for p in probes(shared_data)[:2])
            assert _outbox(state) == made[2:]  # the newest two
            broker.start()
            with subscribed(broker, "line", name="keeper") as sub:
                wait_for(lambda: _ids(sub) == made[2:], timeout=30, what="the two newest")


def test_a_watcher_publishes_one_message_per_file_and_its_stop_leaves_every_result_at_the_broker(
    tmp_path: Path, shared_data: Path
) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    station = station_at(state)
    images = bottles(shared_data, 4)
    with mosquitto() as broker, subscribed(broker, "line") as sub:
        with watching(station, [str(inbox)], mqtt=broker.url("line")) as watcher:
            made: list[dict[str, Any]] = []

            def stop_at_the_fourth(result: dict[str, Any]) -> None:  # the last message was handed over just now
                made.append(result)
                if len(made) == 4:
                    watcher.stopping.set()

            watcher.on_result = stop_at_the_fourth
            for i, p in enumerate(images):
                shutil.copy(p, inbox / f"{i}.png")
            wait_for(watcher.stopping.is_set, what="the fourth result")
        assert _outbox(state) == []  # stopped (the block joins the watcher): each acknowledged by the broker first
        wait_for(lambda: len(_ids(sub)) == 4, timeout=10, what="4 messages")
    history = {r["id"]: r for r in station.iter_results()}
    assert sorted(_ids(sub)) == sorted(history) and len(sub.messages()) == 4
    for topic, m, _ in sub.messages():
        assert topic == "line/default" and set(m) == KEYS and m["source"] == history[m["id"]]["source"]
    assert sorted(Path(m["source"]).name for _, m, _ in sub.messages()) == [f"{i}.png" for i in range(4)]


def test_sigterm_stops_a_watcher_with_status_0_and_every_result_at_the_broker(
    tmp_path: Path, shared_data: Path
) -> None:
    """#31: a minute of `kanoclip watch` with its output to a file, a part every 10 s, then SIGTERM: exit 0 (it was
    143), every result at the broker, no claim left held, and a log of whole lines only, a progress line at most
    every 30 s (it was one carriage-return line rewritten every second, never ended)."""
    inbox, state, log = tmp_path / "inbox", tmp_path / "state", tmp_path / "watch.log"
    inbox.mkdir()
    parts = bottles(shared_data, 6)
    with mosquitto() as broker, subscribed(broker, "line") as sub, log.open("wb") as out:
        command = [sys.executable, "-m", "kanoclip", "watch", str(inbox), "--state", str(state), *TINY_FLAGS]
        command += ["--settle-s", "0.2", "--mqtt", broker.url("line")]
        proc = subprocess.Popen(command, stdout=out, stderr=out)
        started = time.monotonic()
        try:
            for i, p in enumerate(parts):
                shutil.copy(p, inbox / f"{i}.png")
                wait_for(lambda i=i: len(_recorded(state)) == i + 1, timeout=90, what=f"result {i + 1}")
                time.sleep(max(0.0, started + 10 * (i + 1) - time.monotonic()))
            time.sleep(max(0.0, started + 62 - time.monotonic()))
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        elapsed = time.monotonic() - started
        text = log.read_text(errors="replace")
        assert proc.returncode == 0, text[-2000:]
        assert _outbox(state) == []
        wait_for(lambda: len(_ids(sub)) == len(parts), timeout=10, what="every message")
    assert sorted(_ids(sub)) == sorted(_recorded(state)) and len(_recorded(state)) == len(parts)
    assert "\r" not in text and text.endswith("\n")
    progress = [line for line in text.splitlines() if line.startswith("watch default:")]
    assert 2 <= len(progress) <= elapsed // 30 + 1, progress  # every 30 s, and one as it stops
    assert progress[-1].startswith(f"watch default: {len(parts)} scored")
    engine = db.connect(db.database_url(state), upgrade=False)
    try:
        with engine.connect() as c:
            held = c.execute(select(db.claims).where(db.claims.c.result_id.is_(None))).all()
    finally:
        engine.dispose()
    assert held == []  # claimed and not recorded: none left held


def test_on_postgresql_a_sink_starting_takes_over_only_the_outbox_rows_of_sinks_that_are_gone() -> None:
    with throwaway_cluster() as cluster:
        engine = db.connect(cluster.new_database())
        try:
            outbox_rules(engine)
        finally:
            engine.dispose()


def _recorded(state: Path) -> list[int]:
    if not (state / db.DATABASE_FILE).is_file():
        return []
    engine = db.connect(db.database_url(state), upgrade=False)
    try:
        if db.current_revision(engine) != db.head_revision():
            return []
        with engine.connect() as c:
            return list(c.execute(select(db.results.c.id)).scalars())
    finally:
        engine.dispose()
