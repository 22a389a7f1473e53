"""`watch --server` rides out what a line's server does (#31): it stopped on the first 4xx and on a server restart,
and dropped a file another watcher held. Now a restart is waited for (files wait, tried again with backoff), a 4xx
refuses that one file (an event) and the next goes on, and a busy file is tried again until it is recorded."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from kanoclip.station.serve import ServeConfig, make_server
from kanoclip.station.station import Station
from kanoclip.station.watch.watcher import RemoteScorer, Watcher, file_key
from tests.support.station import base_run
from tests.support.watch import bottles, wait_for, watch_config


@contextmanager
def server_on(station: Station, port: int) -> Iterator[None]:
    """The real server on a fixed port (so it can be stopped and started again where the watcher looks)."""
    server = make_server(station, ServeConfig(), host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), what="the server")
    assert server.started
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def small(source: Path, out: Path) -> Path:
    Image.open(source).convert("RGB").resize((64, 64)).save(out)
    return out


def test_a_server_watcher_rides_out_a_restart_a_refused_file_and_a_busy_one(tmp_path: Path, shared_data: Path) -> None:
    inbox, parts = tmp_path / "inbox", tmp_path / "parts"
    inbox.mkdir()
    parts.mkdir()
    images = [small(p, parts / f"{i}.png") for i, p in enumerate(bottles(shared_data, 4))]
    big = bottles(shared_data, 5)[4]  # 900 x 900: over the server's pixel limit, under the watcher's
    station = Station.open(base_run(max_pixels=100 * 100), tmp_path / "state")
    station.configure("default", base_run(max_pixels=100 * 100))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    rows = lambda: sorted(Path(r["source"]).name for r in station.iter_results())  # noqa: E731

    with server_on(station, port):
        watcher = Watcher(RemoteScorer(url, "default", None, 300.0), [str(inbox)], watch_config())
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        (inbox / "a.png").write_bytes(images[0].read_bytes())
        wait_for(lambda: rows() == ["a.png"], what="a.png through the server")
    (inbox / "b.png").write_bytes(images[1].read_bytes())  # the server is down: b waits
    time.sleep(2.0)
    assert thread.is_alive() and rows() == ["a.png"]
    with server_on(station, port):  # back, on the same port
        wait_for(lambda: rows() == ["a.png", "b.png"], what="b.png once the server is back")
        (inbox / "big.png").write_bytes(big.read_bytes())  # refused with a 4xx
        held = "someone-else:1:0123456789abcdef"
        path = inbox / "d.png"
        key = file_key("default", path, images[3].read_bytes())
        assert station.claim("default", key, str(path), 300.0, held) == "mine"  # another watcher holds d.png
        path.write_bytes(images[3].read_bytes())
        wait_for(lambda: [e for e in station.events() if e["kind"] == "source_error"], what="big.png refused")
        time.sleep(1.0)
        assert rows() == ["a.png", "b.png"]  # d.png is busy: not recorded, not dropped
        assert station.release(held) == 1
        wait_for(lambda: rows() == ["a.png", "b.png", "d.png"], what="d.png once its holder let go")
        assert thread.is_alive()
        watcher.stopping.set()
        thread.join(timeout=30)
    refused = [e for e in station.events() if e["kind"] == "source_error"]
    assert [Path(e["source"]).name for e in refused] == ["big.png"] and "HTTP 4" in refused[0]["detail"]
    assert watcher.counts["scored"] == 3 and watcher.counts["failed"] == 1
