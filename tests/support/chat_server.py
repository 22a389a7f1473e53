"""A real HTTP server speaking the chat-completions API on 127.0.0.1, with scripted faults, for the knowledge tests."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.threaded import ThreadedServer


class ChatServer(ThreadedServer):
    """Answers each POST /v1/chat/completions with the next scripted behaviour, then with `default`.

    Behaviours: "ok", "400", "401", "429", "500" (429 and 500 ask for a 10 ms Retry-After),
    "hang" (sleeps `hang_s` before answering), "malformed" (200, not JSON),
    "empty" (200, empty content). `answer(request)` makes the text of an "ok" answer; `delay_s` slows every answer.
    """

    def __init__(self, script: list[str] | None = None, default: str = "ok", hang_s: float = 3.0) -> None:
        self.script, self.default, self.hang_s = list(script or []), default, hang_s
        self.delay_s = 0.0
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.answer = lambda request: "A smooth surface without marks.\nAn even colour across the part."
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    behaviour = server.script.pop(0) if server.script else server.default
                time.sleep(server.delay_s)
                if behaviour == "hang":
                    time.sleep(server.hang_s)
                if behaviour in ("400", "401", "429", "500"):
                    self._send(int(behaviour), json.dumps({"error": {"message": f"scripted {behaviour}"}}).encode())
                elif behaviour == "malformed":
                    self._send(200, b'{"id": "x", "choices": [ this is not json')
                else:
                    text = "" if behaviour == "empty" else server.answer(body)
                    self._send(200, json.dumps(_completion(body["model"], text)).encode())

            def _send(self, status: int, payload: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    if status in (429, 500):
                        self.send_header("retry-after-ms", "10")  # the SDK's retries honour it: tests stay fast
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
