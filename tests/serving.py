"""Start the real kanoclip server (uvicorn) on 127.0.0.1 with an ephemeral port, in a thread, for tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kanoclip.detection import Detector
from kanoclip.serve import ServeConfig, make_server

_APPS: dict[str, object] = {}


def app_of(url: str) -> Any:
    """The ASGI app behind a running test server (its batcher counts what was computed)."""
    return _APPS[url]


@contextmanager
def running_server(detector: Detector, config: ServeConfig) -> Iterator[str]:
    server = make_server(detector, config, host="127.0.0.1", port=0, log_level="warning")  # as `kanoclip serve`
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    _APPS[url] = server.config.app
    try:
        yield url
    finally:
        _APPS.pop(url, None)
        server.should_exit = True
        thread.join(timeout=10)
