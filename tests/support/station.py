"""Helpers shared by the tiers of the former tests/test_station.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from kanoclip.inference.config import RunConfig
from kanoclip.station import db
from kanoclip.station.serve import ServeConfig, create_app
from kanoclip.station.station import Station
from tests.conftest import TINY

BOTTLE = "MVTec_AD/bottle"
HAZELNUT = "MVTec_derived_hazelnut_toy/hazelnut"


def base_run(**fields: Any) -> RunConfig:
    return RunConfig.with_model(TINY, device="cpu", workers=0, **fields)


@contextmanager
def station_client(state: Path, url: str | None = None, **serve: Any) -> Iterator[TestClient]:
    """A station opened as `kanoclip serve --state state [--database url]` does, behind the real app."""
    station = Station.open(base_run(), state, url)
    station.configure("default", base_run())
    app = create_app(station, ServeConfig(**serve))
    try:
        with TestClient(app, base_url="http://127.0.0.1") as client:
            yield client
    finally:
        assert station.engine is not None
        station.engine.dispose()


def files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (p.name, p.read_bytes())) for p in paths]


def goods(shared_data: Path, which: str = BOTTLE, n: int = 3) -> list[Path]:
    return sorted((shared_data / which / "train" / "good").glob("*.png"))[:n]


def probes(shared_data: Path) -> list[Path]:
    test = shared_data / BOTTLE / "test"
    return [test / "good" / "000.png", test / "broken_large" / "000.png", test / "contamination" / "001.png"]


def ok(response: Any) -> Any:
    assert response.status_code in (200, 201), response.text
    return response.json()


def assert_every_row_has_its_files(state: Path, url: str | None) -> int:
    engine = db.connect(url or db.database_url(state), upgrade=False)
    store = state / "blobs"
    with engine.connect() as c:
        rows = list(c.execute(select(db.results)))
    engine.dispose()
    for row in rows:
        for sha in (row.image_sha256, row.overlay_sha256, row.map_sha256):
            assert sha is None or (store / sha[:2] / sha).is_file(), (row.id, sha)
    return len(rows)
