"""Start the real kanoclip server (uvicorn) on 127.0.0.1 with an ephemeral port, in a thread, for tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from kanoclip.detection import Detector
from kanoclip.serve import ServeConfig, create_app


@contextmanager
def running_server(detector: Detector, config: ServeConfig) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(create_app(detector, config), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
