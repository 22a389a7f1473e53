"""Helpers shared by the tiers of the former tests/test_watch.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kanoclip.station.station import Station
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
