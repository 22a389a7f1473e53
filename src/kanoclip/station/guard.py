"""What the server trusts before a request reaches a route: its Host, its origin and its size (README "Security").

- DNS rebinding: a `Host` that is not an IP address, a loopback name or a name the operator allows is refused (400):
  rebinding needs a DNS name, so IP literals (a server on 0.0.0.0 reached by its LAN address) stay usable.
- Cross-site requests: a request that can change state (POST, PUT, PATCH, DELETE) whose `Origin` is not the
  server's own, or whose `Sec-Fetch-Site` says another site sent it, is refused (403), API key or none. Clients that
  are not browsers send neither header and are let through (the API key guards them).
- Body size: a `Content-Length` over the limit is refused at once (413); a body without one (chunked) is counted as
  it arrives and cut off at the limit, so nothing past it reaches memory or a temporary file.
- Slow clients: a body must arrive within `body_timeout` (408); a connection that has not sent a complete request
  line and headers within `HEADER_TIMEOUT` is closed (`GuardedH11Protocol`), and such closes are logged once a
  minute with their count, not once per connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from uvicorn.protocols.http.h11_impl import H11Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK = ("127.0.0.1", "localhost", "::1")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
SAME_SITE = ("same-origin", "none")  # "none": typed in the address bar or a bookmark


HEADER_TIMEOUT = 10.0  # seconds for a connection's request line and headers
LOG_EVERY = 60.0  # seconds between two log lines about closed slow connections

log = logging.getLogger("kanoclip.serve")


class _BodyTooLarge(Exception):
    pass


class _BodyTooSlow(Exception):
    pass


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a header deadline: uvicorn times out idle keep-alive connections only after
    a response, so half-sent requests could hold connections (and `limit_concurrency` slots) forever."""

    header_timeout = HEADER_TIMEOUT
    _closed = 0
    _last_log = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._seen = self.cycle
        self._timer = self.loop.call_later(self.header_timeout, self._check)

    def _check(self) -> None:
        """Close the connection when no request started in the last window and none is being answered."""
        idle = self.cycle is self._seen and (self.cycle is None or self.cycle.response_complete)
        if not idle:
            self._arm()
            return
        if not self.transport.is_closing():
            self.transport.close()
            cls = type(self)
            cls._closed += 1
            now = time.monotonic()
            if now - cls._last_log >= LOG_EVERY:
                log.warning(
                    "closed %d connection(s) that sent no complete request within %g s",
                    cls._closed,
                    self.header_timeout,
                )
                cls._closed, cls._last_log = 0, now

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        super().connection_lost(exc)


def host_name(value: str) -> str:
    """`Host` header or URL authority -> the host name, lower case, without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class RequestGuard:
    """ASGI middleware: Host, origin and body-size checks on every HTTP request."""

    def __init__(
        self, app: ASGIApp, allowed_hosts: tuple[str, ...], max_body_bytes: int, body_timeout: float = 60.0
    ) -> None:
        self.app = app
        self.allowed = {host_name(h) for h in allowed_hosts if h not in ("0.0.0.0", "::")} | set(LOOPBACK)
        self.max_body, self.body_timeout = max_body_bytes, body_timeout

    def _host_allowed(self, name: str) -> bool:
        if name in self.allowed:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not self._host_allowed(host_name(host)):
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
        deadline = time.monotonic() + self.body_timeout
        answer: dict[str, Any] = {"status": 413, "detail": f"request body is over the {self.max_body:,}-byte limit"}

        async def counted() -> Message:
            nonlocal received, over
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                over = True
                answer.update(status=408, detail=f"the request body did not arrive within {self.body_timeout:g} s")
                raise _BodyTooSlow from None
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
                    await _reply(send, int(answer["status"]), str(answer["detail"]))
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except (_BodyTooLarge, _BodyTooSlow):
            if not started:
                await _reply(send, int(answer["status"]), str(answer["detail"]))


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
