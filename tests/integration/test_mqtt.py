"""`--mqtt` without a broker (#31): a bad URL or a missing paho-mqtt is a clear error at start; a broker that cannot
be reached, or never answers, neither stops `serve` from starting nor slows detect: results are in the history and
wait in the state's outbox, and the outage is one log line that never shows the password. (With a real broker:
tests/system/test_mqtt.py.)"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from kanoclip.cli import main
from kanoclip.errors import ConfigError
from kanoclip.station import db
from kanoclip.station.sinks import mqtt
from kanoclip.station.sinks.config import SinkConfig
from kanoclip.station.sinks.fanout import Sinks
from tests.support.serving import TINY_FLAGS
from tests.support.sinks import outbox_rules
from tests.support.station import files, ok, probes, station_client
from tests.support.watch import wait_for


def _outbox(state: Path) -> list[str]:
    engine = db.connect(db.database_url(state), upgrade=False)
    try:
        with engine.connect() as c:
            return list(c.execute(select(db.sink_outbox.c.payload).order_by(db.sink_outbox.c.id)).scalars())
    finally:
        engine.dispose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once closed


@contextmanager
def _silent_broker() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never says a word of MQTT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


@pytest.mark.parametrize(
    "url",
    [
        "http://op:hunter2@127.0.0.1/line",  # not mqtt
        "mqtt://op:hunter2@127.0.0.1",  # no topic
        "mqtt://op:hunter2@127.0.0.1:99999/line",  # a port out of range
        "mqtt://op:hunter2@/line",  # no host
        "mqtt://op:hunter2@127.0.0.1/line/#",  # a wildcard is not a topic to publish on
    ],
)
def test_a_malformed_url_is_a_clear_error_that_shows_the_form_and_never_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as error:
        Sinks.open(SinkConfig(mqtt=url), lambda *_: None)
    assert "expected mqtt://[user:password@]host[:port]/topic" in str(error.value)
    assert "hunter2" not in str(error.value) and "--mqtt" in str(error.value)


def test_a_url_names_the_broker_the_topic_and_the_login_and_mqtts_is_tls_on_8883() -> None:
    b = mqtt.parse("mqtts://line%201:pa%40ss@broker.plant.local/plant/line1/")
    assert (b.tls, b.host, b.port, b.topic, b.user, b.password) == (
        True,
        "broker.plant.local",
        8883,
        "plant/line1",
        "line 1",
        "pa@ss",
    )
    assert b.shown == "mqtts://line%201:***@broker.plant.local/plant/line1/" and "pa@ss" not in repr(b)
    plain = mqtt.parse("mqtt://127.0.0.1/line")
    assert (plain.tls, plain.port, plain.user, plain.password) == (False, 1883, None, None)


def test_a_user_without_a_password_in_the_url_takes_it_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KANOCLIP_MQTT_PASSWORD", "from-env")
    assert mqtt.parse("mqtt://op@127.0.0.1/line").password == "from-env"
    assert mqtt.parse("mqtt://op:given@127.0.0.1/line").password == "given"


def test_watch_with_a_malformed_url_stops_at_start_with_that_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    flags = ["--state", str(tmp_path / "state"), *TINY_FLAGS, "--quiet", "--mqtt", "mqtt://op:hunter2@127.0.0.1"]
    code = main(["watch", str(inbox), *flags])
    err = capsys.readouterr().err
    assert code == 2 and "needs a topic" in err and "op:***@127.0.0.1" in err and "hunter2" not in err


def test_without_paho_mqtt_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("paho", "paho.mqtt", "paho.mqtt.client"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as when it is not installed
    with pytest.raises(ConfigError, match=r"--mqtt needs paho-mqtt.*pip install 'kanoclip\[mqtt\]'"):
        Sinks.open(SinkConfig(mqtt="mqtt://127.0.0.1/line"), lambda *_: None)


def test_an_unreachable_broker_is_one_log_line_and_serve_records_and_keeps_every_result(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(mqtt, "RECONNECT_S", (1, 1))  # a retry a second: three at least while this runs
    url = f"mqtt://op:hunter2@127.0.0.1:{_closed_port()}/line"
    state = tmp_path / "state"
    with caplog.at_level(logging.WARNING, "kanoclip.sinks"):
        with station_client(state, sinks=SinkConfig(mqtt=url)) as c:
            ids = [r["result_id"] for r in ok(c.post("/v1/detect", files=files(probes(shared_data))))["results"]]
            time.sleep(3.5)
            assert [r["id"] for r in ok(c.get("/v1/results"))["results"]] == ids[::-1]  # in the history
            wait_for(lambda: len(_outbox(state)) == 3, timeout=10, what="the messages kept in the state")
            lines = [r.getMessage() for r in caplog.records if r.name == "kanoclip.sinks"]
            assert len(lines) == 1 and "cannot be reached" in lines[0] and "op:***@127.0.0.1" in lines[0]
            # a watcher through this server reports an undelivered message as this kind of event
            event = {"profile": "default", "source": "a.png", "kind": "mqtt_failed", "detail": "dropped"}
            ok(c.post("/v1/events", json=event))
            closing = time.monotonic()
        assert time.monotonic() - closing < 5  # nothing to wait for: the outbox keeps them for the next start
    assert "hunter2" not in caplog.text
    assert [json.loads(p)["id"] for p in _outbox(state)] == ids


def test_a_broker_that_never_answers_does_not_slow_detect(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _silent_broker() as port, station_client(tmp_path / "state") as plain:
        image = files(probes(shared_data)[:1])
        ok(plain.post("/v1/detect", files=image))  # warm
        start = time.monotonic()
        ok(plain.post("/v1/detect", files=image))
        without = time.monotonic() - start
        with station_client(tmp_path / "mqtt", sinks=SinkConfig(mqtt=f"mqtt://127.0.0.1:{port}/line")) as c:
            ok(c.post("/v1/detect", files=image))  # warm
            took = []
            for _ in range(5):
                start = time.monotonic()
                ok(c.post("/v1/detect", files=image))
                took.append(time.monotonic() - start)
            assert len(ok(c.get("/v1/results"))["results"]) == 6
        assert max(took) < without + 2.0, (took, without)


def test_a_sink_starting_takes_over_only_the_outbox_rows_of_sinks_that_are_gone(tmp_path: Path) -> None:
    engine = db.connect(db.database_url(tmp_path))
    try:
        outbox_rules(engine)
    finally:
        engine.dispose()
