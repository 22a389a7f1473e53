"""A station with a labelled history to adapt from, served for real (the CLI's and the page's tests of #32), and
numbers rounded as the page and the CLI round them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx

from kanoclip.station.serve import ServeConfig
from kanoclip.station.station import Station
from tests.support.serving import running_server
from tests.support.station import HAZELNUT, base_run, files


def fixed(value: float | None, none: str = "-") -> str:
    """What JavaScript's toFixed(3) writes (halves of the exact double away from zero); `none` for no number."""
    return none if value is None else str(Decimal(value).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP))


@contextmanager
def labelled_server(state: Path, shared_data: Path, key: str) -> Iterator[tuple[str, httpx.Client]]:
    """4 good hazelnuts as references and 8 verdicts (one of each class given the other's: numbers short of 1),
    served with an API key: the URL and a client that sends the key."""
    station = Station.open(base_run(), state)
    station.configure("default", base_run())
    root = shared_data / HAZELNUT
    refs = sorted((root / "train" / "good").glob("*"))[:4]
    good, colour = sorted((root / "test" / "good").glob("*"))[:4], sorted((root / "test" / "colour").glob("*"))[:4]
    labelled = [(p, "good") for p in good[:3]] + [(p, "defect") for p in colour[:3]]
    labelled += [(good[3], "defect"), (colour[3], "good")]
    try:
        with (
            running_server(station, ServeConfig(api_key=key)) as url,
            httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as http,
        ):
            assert http.post("/v1/profiles/default/references", files=files(refs)).status_code == 200
            for path, verdict in labelled:
                rid = http.post("/v1/detect", files=files([path])).json()["results"][0]["result_id"]
                assert http.post(f"/v1/results/{rid}/feedback", json={"verdict": verdict}).status_code == 200
            yield url, http
    finally:
        assert station.engine is not None
        station.engine.dispose()
