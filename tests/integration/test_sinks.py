"""Sinks on `serve` as on `watch` (#31): each recorded result goes to the webhook as one message of the documented
schema (`kanoclip.station.sinks.message`), and an undelivered one is an event while the result stays in the history."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from kanoclip.inference.thresholds import Thresholds
from kanoclip.labels import Label
from kanoclip.station.sinks.config import SinkConfig
from tests.support.station import files, ok, probes, station_client
from tests.support.streams import webhook_receiver

KEYS = {"schema", "profile", "id", "source", "score", "label", "verdict", "threshold", "time", "error"}
KEYS |= {"frame_index", "frame_time", "defect_type", "defect_type_p"}


def _wait(condition, seconds: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_serve_sends_each_recorded_result_to_the_webhook(tmp_path: Path, shared_data: Path) -> None:
    with webhook_receiver() as hook, station_client(tmp_path / "state", sinks=SinkConfig(webhook=hook["url"])) as c:
        ok(c.patch("/v1/profiles/default", json={"class_name": "bottle"}))
        answer = ok(c.post("/v1/detect", files=files(probes(shared_data))))
        _wait(lambda: len(hook["received"]) == 3)
    rows = {r["result_id"]: r for r in answer["results"]}
    for m in hook["received"]:
        assert set(m) == KEYS and m["schema"] == "kanoclip.result/1" and m["profile"] == "default"
        assert m["score"] == rows[m["id"]]["score"] and m["source"] == rows[m["id"]]["filename"]
        assert m["label"] is None and m["verdict"] is None and m["threshold"] is None  # no threshold chosen yet
        assert m["defect_type"] is None and m["defect_type_p"] is None  # nothing judged, nothing typed
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", m["time"])
    assert sorted(m["id"] for m in hook["received"]) == sorted(rows)


def test_a_labelled_result_says_its_verdict_in_words_and_numbers(tmp_path: Path, shared_data: Path) -> None:
    with webhook_receiver() as hook, station_client(tmp_path / "state", sinks=SinkConfig(webhook=hook["url"])) as c:
        ok(c.patch("/v1/profiles/default", json={"class_name": "bottle"}))
        c.app.state.station.set_thresholds("default", Thresholds(-1.0))  # type: ignore[attr-defined]
        ok(c.post("/v1/detect", files=files(probes(shared_data)[:1])))
        _wait(lambda: len(hook["received"]) == 1)
    m = hook["received"][0]
    assert (m["label"], m["verdict"], m["threshold"]) == (int(Label.DEFECT), "defect", -1.0)


def test_a_webhook_that_is_down_is_an_event_and_the_result_stays(tmp_path: Path, shared_data: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/hook"  # nothing listens once closed
    with station_client(tmp_path / "state", sinks=SinkConfig(webhook=closed)) as c:
        rid = ok(c.post("/v1/detect", files=files(probes(shared_data)[:1])))["results"][0]["result_id"]
        _wait(lambda: ok(c.get("/v1/events"))["events"], seconds=60)
        events = ok(c.get("/v1/events"))["events"]
        assert events[0]["kind"] == "webhook_failed" and closed in events[0]["detail"]
        assert c.get(f"/v1/results/{rid}").status_code == 200


def test_a_sink_that_cannot_start_closes_those_started_before_it() -> None:
    """An OPC UA port in use fails the command, and the webhook opened before it is not left running behind it."""
    from kanoclip.errors import ConfigError
    from kanoclip.station.sinks import webhook
    from kanoclip.station.sinks.fanout import Sinks

    started: list[webhook.Webhook] = []
    real = webhook.Webhook.__init__

    def recorded(self: webhook.Webhook, *args: object, **kwargs: object) -> None:
        real(self, *args, **kwargs)  # type: ignore[arg-type]
        started.append(self)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = SinkConfig(webhook="http://127.0.0.1:9/hook", opcua=f"opc.tcp://127.0.0.1:{port}")
        webhook.Webhook.__init__ = recorded  # type: ignore[method-assign]
        try:
            with pytest.raises(ConfigError, match=f"port {port} is already in use"):
                Sinks.open(cfg, lambda *_: None)
        finally:
            webhook.Webhook.__init__ = real  # type: ignore[method-assign]
    assert len(started) == 1
    started[0].thread.join(timeout=10)
    assert not started[0].thread.is_alive()
