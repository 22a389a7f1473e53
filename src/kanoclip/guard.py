"""What the server trusts before a request reaches a route: its Host, its origin and its size (README "Security").

- DNS rebinding: a `Host` that is not the bound address, a loopback name or one the operator allows is refused (400).
- Cross-site requests: a request that can change state (POST, PUT, PATCH, DELETE) whose `Origin` is not the
  server's own, or whose `Sec-Fetch-Site` says another site sent it, is refused (403), API key or none. Clients that
  are not browsers send neither header and are let through (the API key guards them).
- Body size: a `Content-Length` over the limit is refused at once (413); a body without one (chunked) is counted as
  it arrives and cut off at the limit, so nothing past it reaches memory or a temporary file.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK = ("127.0.0.1", "localhost", "::1")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
SAME_SITE = ("same-origin", "none")  # "none": typed in the address bar or a bookmark


class _BodyTooLarge(Exception):
    pass


def host_name(value: str) -> str:
    """`Host` header or URL authority -> the host name, lower case, without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class RequestGuard:
    """ASGI middleware: Host, origin and body-size checks on every HTTP request."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...], max_body_bytes: int) -> None:
        self.app = app
        self.allowed = {host_name(h) for h in allowed_hosts if h not in ("0.0.0.0", "::")} | set(LOOPBACK)
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if host_name(host) not in self.allowed:
            await _reply(send, 400, f"Host {host!r} is not served here; the operator may allow it with --allowed-host")
            return
        if scope["method"] in UNSAFE_METHODS and not _same_origin(headers, host):
            await _reply(send, 403, "cross-site request refused: only the server's own page may change its state")
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _reply(send, 413, f"request of {length} bytes is over the {self.max_body:,}-byte limit")
            return
        started, over, received = False, False, 0

        async def counted() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    over = True  # whatever the app answers to the error below, the answer is 413
                    raise _BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if over:
                if message["type"] == "http.response.start":
                    started = True
                    await _reply(send, 413, f"request body is over the {self.max_body:,}-byte limit")
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _BodyTooLarge:
            if not started:
                await _reply(send, 413, f"request body is over the {self.max_body:,}-byte limit")


def _same_origin(headers: dict[str, str], host: str) -> bool:
    site = headers.get("sec-fetch-site")
    if site is not None and site not in SAME_SITE:
        return False
    origin = headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return origin != "null" and parts.netloc.lower() == host.strip().lower()


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
