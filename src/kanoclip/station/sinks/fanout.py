"""Every sink a station was given, as one: each result is handed to each (none blocks), and closing flushes them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

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
    def open(cls, cfg: SinkConfig, on_failure: OnFailure) -> Sinks:
        sinks: list[Sink] = []
        if cfg.webhook:
            from kanoclip.station.sinks.webhook import Webhook

            sinks.append(Webhook(cfg.webhook, cfg.webhook_on, lambda m, why: on_failure(m, "webhook_failed", why)))
        return cls(sinks)

    def send(self, message: dict[str, Any]) -> None:
        """Hand a message (`message.message`) to each sink; none blocks."""
        for sink in self.sinks:
            sink.send(message)

    def close(self, wait_s: float = 10.0) -> None:
        """Deliver what is queued (each sink for at most `wait_s`), then stop."""
        for sink in self.sinks:
            sink.close(wait_s)
