"""A test's own HTTP server (the fake Hub, the fake chat API) on 127.0.0.1, served from a thread while in use."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from typing import Self


class ThreadedServer:
    """Subclasses set `httpd`; `running()` serves it until the block ends, then closes its socket."""

    httpd: ThreadingHTTPServer

    @contextmanager
    def running(self) -> Iterator[Self]:
        thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()
