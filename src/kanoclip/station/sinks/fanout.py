"""Every sink a station was given, as one: each result is handed to each (none blocks), and closing flushes them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import Engine

from kanoclip.station.sinks.config import SinkConfig

# A message a sink could not deliver, the event's kind ("webhook_failed", ...) and why: recorded as an event of the
# result's source (the history keeps the result itself)
OnFailure = Callable[[dict[str, Any], str, str], None]


class Sink(Protocol):
    def send(self, result: dict[str, Any]) -> None: ...

    def close(self, wait_s: float = 10.0) -> None: ...


class Sinks:
    """The sinks of one `watch` or `serve`, opened from its `SinkConfig`."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    @classmethod
    def open(cls, cfg: SinkConfig, on_failure: OnFailure, engine: Engine | None = None) -> Sinks:
        """`engine`: the station's database, where a sink keeps what its destination has not yet acknowledged (None:
        no state, kept in memory). A sink that cannot start (a port in use, a bad URL) closes those already
        started before its error goes up: none is left running behind a command that failed."""
        sinks: list[Sink] = []
        try:
            cls._start(cfg, on_failure, engine, sinks)
        except BaseException:
            for sink in sinks:
                sink.close(0.0)
            raise
        return cls(sinks)

    @staticmethod
    def _start(cfg: SinkConfig, on_failure: OnFailure, engine: Engine | None, sinks: list[Sink]) -> None:
        if cfg.webhook:
            from kanoclip.station.sinks.webhook import Webhook

            sinks.append(Webhook(cfg.webhook, cfg.webhook_on, lambda m, why: on_failure(m, "webhook_failed", why)))
        if cfg.mqtt:
            from kanoclip.station.sinks.mqtt import Mqtt

            sinks.append(Mqtt(cfg.mqtt, lambda m, why: on_failure(m, "mqtt_failed", why), cfg.mqtt_queue, engine))
        if cfg.opcua:
            from kanoclip.station.sinks.opcua import OpcUa

            sinks.append(
                OpcUa(
                    cfg.opcua,
                    lambda m, why: on_failure(m, "opcua_failed", why),
                    user=cfg.opcua_user,
                    password=cfg.opcua_password,
                    security=cfg.opcua_security,
                    cert=cfg.opcua_cert,
                    key=cfg.opcua_key,
                )
            )

    def send(self, message: dict[str, Any]) -> None:
        """Hand a message (`message.message`) to each sink; none blocks."""
        for sink in self.sinks:
            sink.send(message)

    def close(self, wait_s: float = 10.0) -> None:
        """Deliver what is queued (each sink for at most `wait_s`), then stop."""
        for sink in self.sinks:
            sink.close(wait_s)
