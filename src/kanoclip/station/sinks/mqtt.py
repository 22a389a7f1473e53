"""Each result published to an MQTT broker (`--mqtt mqtt://[user:pass@]host[:port]/topic`, or `mqtts://` with TLS
through the system's CA store): one JSON message (`message.message`, unchanged) per result on `<topic>/<profile>`,
QoS 1 and retained, so the broker holds the last result of each profile for whoever subscribes later.

`send` only hands the message to this sink's thread, which keeps it in the outbox (the station's database, or memory
without a state) until the broker acknowledges it (PUBACK): results made while the broker is down, or before a
restart, are published, in order, once it is back. paho-mqtt's own thread connects, and reconnects with exponential
backoff; a broker unreachable at start is one log line, never a reason not to start. The outbox is bounded: past
`queue_size` messages the oldest is dropped and reported to `on_failure` (the result stays in the history).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from sqlalchemy import Engine

from kanoclip.errors import ConfigError
from kanoclip.station.sinks.outbox import MemoryOutbox, Outbox, Queued, TableOutbox

log = logging.getLogger("kanoclip.sinks")

INSTALL = "pip install 'kanoclip[mqtt]'"
FORM = "mqtt://[user:password@]host[:port]/topic (or mqtts:// for TLS)"
PORTS = {"mqtt": 1883, "mqtts": 8883}
WINDOW = 100  # messages handed to paho and not yet acknowledged, at most
RECONNECT_S = (1, 30)  # paho's backoff: the first wait after a failure, doubled up to the last
FIRST_CONNECT_S = 5.0  # closing just after the start, with a state: how long the first connection may still take
PASSWORD_ENV = "KANOCLIP_MQTT_PASSWORD"  # the password when the URL gives a user and none (kept out of `ps`)


@dataclass(frozen=True)
class Broker:
    """Where `--mqtt` publishes, parsed; `shown` is the URL without its password, for messages and logs."""

    tls: bool
    host: str
    port: int
    topic: str
    user: str | None
    password: str | None = field(repr=False)
    shown: str

    @property
    def key(self) -> str:
        """This destination in the outbox: scheme, host, port and topic (no credentials)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}/{self.topic}"


def parse(url: str) -> Broker:
    """`--mqtt`'s URL, or a ConfigError that shows the expected form (never the password)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"--mqtt: {_hide(url)} is not a URL ({e}); expected {FORM}") from e
    if "#" in url or "?" in url:
        raise ConfigError(
            "--mqtt: the URL holds '#' or '?': a topic to publish on holds neither (in a password, write them as %23 "
            f"and %3F); expected {FORM}"
        )
    shown = _hide(url, parts)
    scheme = parts.scheme.lower()
    if scheme not in PORTS:
        raise ConfigError(f"--mqtt: {shown} does not start with mqtt:// or mqtts://; expected {FORM}")
    if not parts.hostname:
        raise ConfigError(f"--mqtt: {shown} names no host; expected {FORM}")
    topic = unquote(parts.path).strip("/")
    if not topic:
        raise ConfigError(f"--mqtt: {shown} needs a topic as its path; expected {FORM}")
    if "+" in topic or "\0" in topic or "//" in topic:
        raise ConfigError(f"--mqtt: topic {topic!r} may not hold '+' or an empty level; expected {FORM}")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if user is not None and password is None:
        password = os.environ.get(PASSWORD_ENV)
    host = parts.hostname
    return Broker(scheme == "mqtts", host, port or PORTS[scheme], topic, user, password, shown)


def _hide(url: str, parts: SplitResult | None = None) -> str:
    """The URL as it may be printed: `user:***@host`."""
    if parts is None:
        try:
            parts = urlsplit(url)
        except ValueError:
            return url.split("@")[-1] if "@" in url else url
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()


def _paho() -> Any:
    """paho-mqtt 2.x, or a ConfigError that says how to install it."""
    try:
        import paho.mqtt.client as client
    except ImportError as e:
        raise ConfigError(f"--mqtt needs paho-mqtt, which is not installed: {INSTALL}") from e
    if not hasattr(client, "CallbackAPIVersion"):
        raise ConfigError(f"--mqtt needs paho-mqtt 2.0 or newer: {INSTALL}")
    return client


class Mqtt:
    """A sink (`fanout.Sink`) to one broker and topic.

    Args:
        url: `--mqtt`'s URL.
        on_failure: told of each message dropped (the outbox full) or undelivered at close, with why.
        queue_size: the outbox's bound, in messages (`--mqtt-queue`).
        engine: the station's database, where the outbox is kept (None: in memory).
    """

    def __init__(
        self,
        url: str,
        on_failure: Callable[[dict[str, Any], str], None],
        queue_size: int = 10_000,
        engine: Engine | None = None,
    ) -> None:
        self.broker = parse(url)
        if queue_size < 1:
            raise ConfigError(f"--mqtt-queue must be at least 1, got {queue_size}")
        mqtt = _paho()
        self.on_failure, self.queue_size = on_failure, queue_size
        self._memory = MemoryOutbox()
        self.outbox: Outbox = TableOutbox(engine, self.broker.key) if engine is not None else self._memory
        self.published = self.dropped = 0
        self._cond = threading.Condition()
        self._incoming: list[dict[str, Any]] = []  # from `send`, for this sink's thread
        self._acked: list[int] = []  # message ids the broker acknowledged, from paho's thread
        self._connected = False
        self._kicked = False  # connected: this sink's thread has kept messages to hand over
        self._reachable: bool | None = None  # None: not tried yet; False: the last try failed
        self._resending = False  # reconnected: paho resends what was in flight, before anything newer goes
        self._closing_at: float | None = None  # close's deadline
        self._started = time.monotonic()
        self._pending: deque[Queued] = deque()  # kept, not yet handed to paho
        self._inflight: dict[int, Queued] = {}  # handed to paho, by message id, until acknowledged

        b = self.broker
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        if b.user is not None:
            self.client.username_pw_set(b.user, b.password)
        if b.tls:
            self.client.tls_set()  # the system's CA store; the host name is checked
        self.client.reconnect_delay_set(*RECONNECT_S)
        self.client.max_inflight_messages_set(WINDOW)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.thread = threading.Thread(target=self._run, name="kanoclip-mqtt", daemon=True)
        self.thread.start()

    # -- the caller's side ---------------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        """Hand a message to this sink's thread: no network, no disk here."""
        with self._cond:
            self._incoming.append(message)
            self._cond.notify()

    def close(self, wait_s: float = 10.0) -> None:
        """Publish what is kept (for at most `wait_s`; with a state, not while the broker is away: the outbox keeps
        it for the next start), then disconnect."""
        with self._cond:
            if self._closing_at is None:
                self._closing_at = time.monotonic() + wait_s
            self._cond.notify()
        self.thread.join(timeout=wait_s + 10)

    @property
    def waiting(self) -> int:
        """Messages kept and not yet acknowledged (as of this sink's thread's last pass)."""
        return len(self._pending) + len(self._inflight)

    # -- paho's thread -------------------------------------------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._down(f"refused the connection ({reason})")
            return
        if self._reachable is False:
            log.warning("mqtt: connected to %s again; publishing what waited", self.broker.shown)
        with self._cond:
            self._connected = self._reachable = self._kicked = True
            self._cond.notify()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._down("cannot be reached")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._cond:
            self._connected = False
            self._resending = True
        if self._closing_at is None:
            self._down(f"closed the connection ({reason})")

    def _down(self, why: str) -> None:
        """One log line per outage, not one per retry."""
        with self._cond:
            self._connected = False
            first = self._reachable is not False
            self._reachable = False
            self._cond.notify()
        if first:
            log.warning(
                "mqtt: %s %s; retrying with backoff (up to %d s); results wait in the %s outbox",
                self.broker.shown,
                why,
                RECONNECT_S[1],
                "state's" if self.outbox.durable else "in-memory",
            )

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._cond:
            self._acked.append(mid)
            self._cond.notify()

    # -- this sink's thread --------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._pending.extend(self.outbox.adopt())
        except Exception as e:  # the database: what the last run kept waits for the next start
            log.warning("mqtt: could not read the outbox in the state: %s", e)
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()
        try:
            while True:
                with self._cond:
                    if not (self._incoming or self._acked or self._kicked or self._closing_at is not None):
                        self._cond.wait(timeout=0.5)
                    self._kicked = False
                    incoming, self._incoming = self._incoming, []
                    acked, self._acked = self._acked, []
                    closing_at = self._closing_at
                self._keep(incoming)
                self._acknowledge(acked)
                self._publish()
                if closing_at is not None and self._done(closing_at):
                    break
                if closing_at is not None:
                    with self._cond:
                        if not (self._incoming or self._acked):
                            self._cond.wait(timeout=0.05)
        finally:
            self._stop()

    def _keep(self, messages: list[dict[str, Any]]) -> None:
        """Into the outbox (one transaction), and past its bound the oldest waiting message out."""
        if not messages:
            return
        entries = [(f"{self.broker.topic}/{m.get('profile')}", json.dumps(m)) for m in messages]
        try:
            kept = self.outbox.add(entries)
        except Exception as e:  # the database busy or gone for a moment: published all the same while this runs
            log.warning("mqtt: could not keep %d message(s) in the state's outbox: %s", len(entries), e)
            kept = self._memory.add(entries)
        self._pending.extend(kept)
        over = len(self._pending) + len(self._inflight) - self.queue_size
        dropped = [self._pending.popleft() for _ in range(min(over, len(self._pending)))] if over > 0 else []
        if dropped:
            self._forget([q.id for q in dropped])
            self.dropped += len(dropped)
            for q in dropped:
                self._fail(q, f"dropped: {self.queue_size} messages were already waiting for {self.broker.shown}")

    def _acknowledge(self, mids: list[int]) -> None:
        done = [q for q in (self._inflight.pop(mid, None) for mid in mids) if q is not None]
        if done:
            self.published += len(done)
            self._forget([q.id for q in done])

    def _publish(self) -> None:
        """Hand the oldest kept messages to paho while connected, at most `WINDOW` unacknowledged; after a
        reconnection only once what was in flight before has been acknowledged (paho resends it first)."""
        with self._cond:
            if not self._connected:
                return
            if self._resending and self._inflight:
                return
            self._resending = False
        while self._pending and len(self._inflight) < WINDOW:
            q = self._pending[0]
            try:
                info = self.client.publish(q.topic, q.payload, qos=1, retain=True)
            except ValueError as e:  # a message paho refuses (too large): never deliverable
                self._pending.popleft()
                self._forget([q.id])
                self._fail(q, f"refused by paho-mqtt: {e}")
                continue
            self._pending.popleft()
            self._inflight[info.mid] = q

    def _done(self, closing_at: float) -> bool:
        if not self._pending and not self._inflight:
            return True
        if time.monotonic() >= closing_at:
            return True
        with self._cond:  # with a state, kept there for the next start; the first connection has a moment
            first_try = self._reachable is None and time.monotonic() - self._started < FIRST_CONNECT_S
            return self.outbox.durable and not self._connected and not first_try

    def _stop(self) -> None:
        self.client.disconnect()  # not connected: nothing to say
        self.client.loop_stop()
        left = list(self._inflight.values()) + list(self._pending)
        if left and not self.outbox.durable:
            self._fail(left[-1], f"not delivered: {len(left)} message(s) were still waiting for {self.broker.shown}")
        elif left:
            log.warning(
                "mqtt: %d message(s) for %s stay in the state's outbox for the next start", len(left), self.broker.shown
            )
        self.outbox.close()

    def _forget(self, ids: list[int]) -> None:
        try:
            self.outbox.remove(ids)
        except Exception as e:  # left in the outbox: published again at the next start (at least once)
            log.warning("mqtt: could not clear %d message(s) from the outbox: %s", len(ids), e)

    def _fail(self, q: Queued, why: str) -> None:
        try:
            message = json.loads(q.payload)
        except ValueError:
            message = {"source": q.topic}
        try:
            self.on_failure(message, why)
        except Exception as e:  # the event could not be recorded: said here instead
            log.warning("mqtt: %s (%s; could not record the event: %s)", why, message.get("source"), e)
