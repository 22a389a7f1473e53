"""`kanoclip serve`: the listening socket and the uvicorn server around the app (`app.main.create_app`).

The names callers import from here (`create_app`, `ServeConfig`, `history_csv`, `decode_upload`) stay importable,
wherever they live now.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Any

from kanoclip.errors import ConfigError
from kanoclip.inference.detector import Detector
from kanoclip.station.app.main import create_app
from kanoclip.station.app.uploads import decode_upload
from kanoclip.station.config import ServeConfig
from kanoclip.station.guard import GuardedH11Protocol
from kanoclip.station.results import history_csv
from kanoclip.station.station import DEFAULT_PROFILE, Station

if TYPE_CHECKING:
    import uvicorn

__all__ = ["ServeConfig", "create_app", "decode_upload", "history_csv", "listen", "make_server", "serve"]


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the URL is printed; a port in use is a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use: try another with --port") from e
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.listen(2048)
    return sock


def make_server(
    station: Station | Detector, config: ServeConfig, default: str = DEFAULT_PROFILE, **where: Any
) -> uvicorn.Server:
    """The uvicorn server every entry point runs (`where`: host and port, when no socket is given): idle keep-alive
    connections close after 5 s, half-sent requests after `HEADER_TIMEOUT`, and past `limit_concurrency`
    connections new ones get 503 instead of queueing without bound."""
    import uvicorn

    settings: dict[str, Any] = {
        "http": GuardedH11Protocol,
        "log_level": "info",
        "timeout_keep_alive": 5,
        "limit_concurrency": 256,
        "h11_max_incomplete_event_size": 64 * 1024,
        **where,
    }
    return uvicorn.Server(uvicorn.Config(create_app(station, config, default), **settings))


def serve(station: Station, sock: socket.socket, config: ServeConfig, default: str = DEFAULT_PROFILE) -> None:
    """Run on a socket from `listen` until interrupted."""
    server = make_server(station, config, default)
    host, port = sock.getsockname()[:2]
    print(
        f"kanoclip: listening on http://{host if ':' not in host else f'[{host}]'}:{port}/ (the web page)", flush=True
    )
    server.run(sockets=[sock])
