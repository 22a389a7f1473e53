"""Local servers for watch tests, on 127.0.0.1 at free ports, in threads: an MJPEG camera that drops its first
connection after a few frames, and a webhook receiver that keeps what it was sent."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image


def jpeg(rgb: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@contextmanager
def mjpeg_camera(frame: NDArray[np.uint8], fps: float, drop_after: int, down_s: float) -> Iterator[dict[str, Any]]:
    """`multipart/x-mixed-replace` JPEG frames, as IP cameras serve them. The first connection ends after
    `drop_after` frames and the camera refuses connections (503) for `down_s` seconds; later ones stream until the
    server stops. Yields {"url", "connections"}."""
    data = jpeg(frame)
    state: dict[str, Any] = {"connections": 0, "dropped_at": None}
    stopping = threading.Event()

    class Camera(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            dropped = state["dropped_at"]
            if dropped is not None and time.monotonic() - dropped < down_s:
                self.send_error(503)
                return
            state["connections"] += 1
            first = state["connections"] == 1
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            sent = 0
            try:
                while not stopping.is_set() and not (first and sent >= drop_after):
                    self.wfile.write(
                        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                        + str(len(data)).encode()
                        + b"\r\n\r\n"
                        + data
                        + b"\r\n"
                    )
                    self.wfile.flush()
                    sent += 1
                    time.sleep(1 / fps)
            except (BrokenPipeError, ConnectionResetError):
                return
            if first:
                state["dropped_at"] = time.monotonic()
                self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg"
    try:
        yield state
    finally:
        stopping.set()
        server.shutdown()
        server.server_close()


@contextmanager
def webhook_receiver() -> Iterator[dict[str, Any]]:
    """Collects every JSON body POSTed to it. Yields {"url", "received": [...]}."""
    state: dict[str, Any] = {"received": []}

    class Receiver(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state["received"].append(json.loads(body))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
