"""A throwaway MQTT broker for tests: Debian's mosquitto (`.ci/run` installs package mosquitto) on 127.0.0.1 at a
free port, its config, persistence and log in a temporary folder; stopped (and startable again on the same port) by
the test, and always stopped at the end. Persistence is on, so a subscriber's session (clean_session=False) and the
messages queued for it survive a restart of the broker, as on a real line."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

INSTALL = "install Debian's mosquitto package (bash .ci/run does)"
BINARY = "/usr/sbin/mosquitto"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """One mosquitto process at a time on `port`; `stop` and `start` keep the port and what was persisted."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None) -> None:
        binary = shutil.which("mosquitto") or BINARY
        if not Path(binary).is_file():
            raise RuntimeError(f"mosquitto is not installed: {INSTALL}")
        self.binary, self.folder, self.port = binary, folder, _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {folder}/",
            f"log_dest file {folder / 'broker.log'}",
        ]
        if users:
            passwords = folder / "passwords"
            passwords.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True, timeout=30)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        if os.geteuid() == 0:
            lines.append("user root")  # mosquitto drops to user `mosquitto` otherwise, which cannot write here
        (folder / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    def url(self, topic: str = "line", user: str = "") -> str:
        return f"mqtt://{user + '@' if user else ''}127.0.0.1:{self.port}/{topic}"

    def start(self, timeout: float = 20.0) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.folder / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.folder / "broker.log").read_text(errors="replace")[-2000:]
                self.process = None
                raise RuntimeError(f"mosquitto exited at start: {log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept connections within {timeout:g} s")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (it saves its persistence file), SIGKILL past `timeout`."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)
        self.process = None


@contextmanager
def mosquitto(users: dict[str, str] | None = None) -> Iterator[Broker]:
    """A broker, running, for the block."""
    folder = Path(tempfile.mkdtemp(prefix="kanoclip-mqtt-"))
    broker = Broker(folder, users)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)


class Subscriber:
    """A paho client subscribed to `topic/#` at QoS 1 with a persistent session: what the broker delivers, in order,
    including what was queued for it while it or the broker was away."""

    def __init__(self, broker: Broker, topic: str, auth: tuple[str, str] | None = None, name: str = "") -> None:
        import paho.mqtt.client as mqtt

        self.received: list[tuple[str, dict[str, Any], bool]] = []  # topic, message, retained
        self.qos: list[int] = []  # the QoS each came with (the lower of the publisher's and this subscription's)
        self.arrived: list[float] = []  # time.monotonic() at each
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        name = name or f"test-{os.getpid()}-{time.monotonic_ns()}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, clean_session=False)
        if auth:
            self.client.username_pw_set(*auth)
        self.client.reconnect_delay_set(1, 1)
        self.topic = topic
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", broker.port)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        """Subscribe once: a resumed session keeps the subscription (subscribing again would deliver the retained
        message once more, perhaps before what was queued for the session)."""
        if flags.session_present:
            self.subscribed.set()
        else:
            client.subscribe(f"{self.topic}/#", qos=1)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.received.append((message.topic, json.loads(message.payload), bool(message.retain)))
            self.qos.append(int(message.qos))
            self.arrived.append(time.monotonic())

    def messages(self) -> list[tuple[str, dict[str, Any], bool]]:
        with self.lock:
            return list(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def subscribed(broker: Broker, topic: str, auth: tuple[str, str] | None = None, name: str = "") -> Iterator[Subscriber]:
    """A `Subscriber`, subscribed, for the block; the same `name` again resumes its session."""
    sub = Subscriber(broker, topic, auth, name)
    try:
        if not sub.subscribed.wait(20):
            raise RuntimeError("the test's subscriber did not subscribe within 20 s")
        yield sub
    finally:
        sub.close()


def retained(broker: Broker, topic: str, timeout: float = 10.0) -> dict[str, Any] | None:
    """The message the broker retains on `topic` (a fresh subscriber's first delivery), None when none comes."""
    import paho.mqtt.client as mqtt

    got: list[dict[str, Any]] = []
    done = threading.Event()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        if message.retain:
            got.append(json.loads(message.payload))
        done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None
