"""A webhook that receives each result (or each defective one) as JSON.

Deliveries run on their own thread from a bounded queue, so a sink that is slow or down never blocks scoring; each is
tried a few times with backoff, and what could not be delivered (or did not fit in the queue) is reported to
`on_failure`, which the watcher records as an event in the history.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from kanoclip.errors import ConfigError
from kanoclip.labels import Label

RETRY_S = (0.5, 2.0, 5.0)


class Webhook:
    def __init__(
        self,
        url: str,
        on: str,
        on_failure: Callable[[dict[str, Any], str], None],
        queue_size: int = 1000,
        timeout_s: float = 5.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--webhook takes an http:// or https:// URL, got {url!r}")
        on = on if on == "all" else Label.parse(on).word  # "ng": the earlier name
        if on not in ("all", Label.DEFECT.word):
            raise ConfigError(f"--webhook-on is all or ng, got {on!r}")
        self.url, self.on, self.on_failure, self.timeout_s = url, on, on_failure, timeout_s
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(queue_size)
        self.delivered = self.failed = 0
        self.thread = threading.Thread(target=self._run, name="kanoclip-webhook", daemon=True)
        self.thread.start()

    def send(self, result: dict[str, Any]) -> None:
        """Queue a result for delivery (never blocks): defects only with `on="defect"`; a full queue is a failure."""
        if self.on == Label.DEFECT.word and result.get("label") != Label.DEFECT:
            return
        try:
            self.queue.put_nowait(result)
        except queue.Full:
            self.failed += 1
            self.on_failure(result, f"not sent: {self.queue.maxsize} results were already waiting for {self.url}")

    def close(self, wait_s: float = 10.0) -> None:
        """Deliver what is queued (for at most `wait_s`), then stop."""
        try:
            self.queue.put(None, timeout=wait_s)
        except queue.Full:
            return
        self.thread.join(timeout=wait_s)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s) as client:
            while (result := self.queue.get()) is not None:
                error = ""
                for wait in (0.0, *RETRY_S):
                    time.sleep(wait)
                    try:
                        response = client.post(self.url, json=result)
                        if response.status_code < 300:
                            self.delivered += 1
                            break
                        error = f"HTTP {response.status_code}"
                    except httpx.HTTPError as e:
                        error = f"{type(e).__name__}: {e}"
                else:
                    self.failed += 1
                    self.on_failure(result, f"not delivered to {self.url} after {1 + len(RETRY_S)} tries ({error})")
