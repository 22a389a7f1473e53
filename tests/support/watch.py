"""Helpers shared by the tiers of the former tests/test_watch.py."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kanoclip.station.sinks.config import SinkConfig
from kanoclip.station.station import Station
from kanoclip.station.watch.watcher import LocalScorer, WatchConfig, Watcher
from tests.support.station import BOTTLE, base_run


def station_at(state: Path, **profile: Any) -> Station:
    station = Station.open(base_run(), state)
    station.configure("default", base_run(**profile))
    return station


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def bottles(shared_data: Path, n: int) -> list[Path]:
    return sorted((shared_data / BOTTLE / "test").rglob("*.png"))[:n]


FAST = {"settle_s": 0.3, "progress": False, "claim_timeout_s": 2.0, "corrupt_after_s": 1.0}


def watch_config(**cfg: Any) -> WatchConfig:
    """`FAST` with these settings; the sinks' (webhook, ...) go into its `SinkConfig`."""
    sink_fields = {f.name for f in dataclasses.fields(SinkConfig)}
    sinks = SinkConfig(**{k: v for k, v in cfg.items() if k in sink_fields})
    return WatchConfig(**{**FAST, **{k: v for k, v in cfg.items() if k not in sink_fields}}, sinks=sinks)


@contextmanager
def watching(station: Station, sources: list[str], **cfg: Any) -> Iterator[Watcher]:
    """A watcher running in a thread until the block ends."""
    watcher = Watcher(LocalScorer(station, "default"), sources, watch_config(**cfg))
    done = threading.Event()
    thread = threading.Thread(target=watcher.run, kwargs={"until": done.is_set}, daemon=True)
    thread.start()
    try:
        yield watcher
    finally:
        done.set()
        thread.join(timeout=30)
