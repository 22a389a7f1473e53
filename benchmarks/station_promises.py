"""What the station's promises cost (issue #30): the state's bytes over 50 "good" verdicts (goal: linear, one bank
file kept, not one per verdict), retention over 1,000,000 rows in SQLite (timed), and a detect on one profile during
another profile's calibrate (goal: it waits for at most 2 of the calibration's passes). Recording with file and
directory fsync against no recording is `benchmarks.station`'s first table.

    python -m benchmarks.station_promises [--quick] [--no-append]   (--quick: the tiny model; still 1M rows)
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from benchmarks.common import standalone
from benchmarks.station import fill
from kanoclip import KAnoCLIPConfig, RunConfig
from kanoclip.station import db
from kanoclip.station.serve import ServeConfig, create_app
from kanoclip.station.station import Station

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _images() -> list[Path]:
    """Distinct real images: the hazelnut sample's, then MVTec AD's (masks aside)."""
    found = sorted((SHARED / "MVTec_derived_hazelnut_toy").rglob("*.jpg"))
    found += sorted(p for p in (SHARED / "MVTec_AD").rglob("*.png") if "ground_truth" not in p.parts)
    return found


def _run(quick: bool, device: torch.device) -> tuple[RunConfig, str]:
    """The run options, and the model in words."""
    backbone, size = ("kanoclip-tiny", 112) if quick else ("ViT-B-16", 224)
    config = KAnoCLIPConfig(backbone=backbone, pretrained="none", image_size=size)
    return RunConfig.with_model(config, device=device.type, workers=0), f"{backbone} at {size}"


def _client(run: RunConfig, state: Path) -> tuple[TestClient, Station]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        station = Station.open(run, state)
        station.configure("default", run)
    return TestClient(create_app(station, ServeConfig()), base_url="http://127.0.0.1"), station


def _ok(response: Any) -> Any:
    assert response.status_code in (200, 201), response.text
    return response.json()


def _upload(path: Path) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (path.name, path.read_bytes()))]


def _state_bytes(state: Path) -> int:
    return sum(p.stat().st_size for p in state.rglob("*") if p.is_file())


def verdicts(quick: bool, device: torch.device, folder: Path) -> list[str]:
    """50 results marked good one after another; the state's bytes after every 10, as the server leaves them (the
    replaced banks inside their 5 s grace) and once the grace has passed (the store's grace set to 0: what
    the next retire or retention pass leaves)."""
    (run, model), images = _run(quick, device), _images()
    assert len(images) >= 52, f"need 52 distinct images under {SHARED}"
    out = {}
    for label, grace in (("within the grace", None), ("grace passed", 0.0)):
        state = folder / label.replace(" ", "-")
        client, station = _client(run, state)
        assert station.store is not None
        if grace is not None:
            station.store.grace_s = grace
        with client as c:
            _ok(c.post("/v1/references", files=_upload(images[0]) + _upload(images[1])))
            ids = [_ok(c.post("/v1/detect", files=_upload(p)))["results"][0]["result_id"] for p in images[2:52]]
            sizes = [_state_bytes(state)]
            for n, rid in enumerate(ids, 1):
                _ok(c.post(f"/v1/results/{rid}/feedback", json={"verdict": "good"}))
                if n % 10 == 0:
                    sizes.append(_state_bytes(state))
            bank = station.store.path(station.profile("default").bank_sha256 or "").stat().st_size
        assert station.engine is not None
        station.engine.dispose()
        out[label] = (sizes, bank)
    rows = [
        f"{model}: 2 good parts, then 50 results marked good one after another (each adds "
        "its image to the bank); the state folder's bytes (database, store) before the verdicts and after every 10:",
        "",
        "| state | 0 | 10 | 20 | 30 | 40 | 50 | growth per 10, first and last | bank file at 52 parts |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, (sizes, bank) in out.items():
        steps = [b - a for a, b in itertools.pairwise(sizes)]
        rows.append(f"| {label} | {' | '.join(f'{s:,}' for s in sizes)} | {steps[0]:,} / {steps[-1]:,} | {bank:,} |")
    return rows


def retention(quick: bool, folder: Path) -> list[str]:
    """`Station.prune` over a filled SQLite history: by age (half of the rows), then by bytes (half of the rest)."""
    n = 1_000_000  # the size whatever the model: retention does not run it
    url = db.database_url(folder)
    db.connect(url).dispose()  # the schema at head
    filled = fill(url, n)  # created_at one second apart, ending now; 300,000 stored bytes each
    file = folder / db.DATABASE_FILE
    checks = []
    for _ in range(3):
        start = time.perf_counter()
        db.check_sqlite_file(file)  # what every start and every `history` runs first (PRAGMA quick_check)
        checks.append(time.perf_counter() - start)
    station = Station(RunConfig(), db.connect(url), folder)
    assert station.engine is not None
    rows_left = []
    start = time.perf_counter()
    removed_by_age = station.prune(keep_days=(n / 2) / 86400, max_store_bytes=None)
    by_age = time.perf_counter() - start
    with station.engine.connect() as c:
        rows_left.append(int(c.execute(select(func.count()).select_from(db.results)).scalar() or 0))
    start = time.perf_counter()
    removed_by_bytes = station.prune(keep_days=None, max_store_bytes=(rows_left[0] // 2) * 300_000)
    by_bytes = time.perf_counter() - start
    with station.engine.connect() as c:
        rows_left.append(int(c.execute(select(func.count()).select_from(db.results)).scalar() or 0))
    station.engine.dispose()
    return [
        "",
        f"Retention over {n:,} results in SQLite (filled in {filled:.1f} s), 500 rows per transaction, their files "
        "looked up and removed where nothing names them:",
        "",
        "| prune | rows removed | rows left | seconds | rows/s |",
        "|---|---|---|---|---|",
        f"| by age (--keep-days: the older half) | {removed_by_age:,} | {rows_left[0]:,} | {by_age:.1f} | "
        f"{removed_by_age / by_age:,.0f} |",
        f"| by bytes (--max-store-gb: half of the rest) | {removed_by_bytes:,} | {rows_left[1]:,} | {by_bytes:.1f} | "
        f"{removed_by_bytes / by_bytes:,.0f} |",
        "",
        f"The start-up check of that database ({file.stat().st_size / 2**20:,.0f} MiB, {n:,} rows; `PRAGMA "
        f"quick_check`, run by every start and every `history`): {statistics.median(checks):.2f} s (median of 3, "
        "warm page cache).",
    ]


def fairness(quick: bool, device: torch.device, folder: Path) -> list[str]:
    """A detect on profile A alone, and sent while profile B calibrates on `goods` good parts: its latency, and how
    many of B's passes ran between its sending and its own pass."""
    (run, model), images = _run(quick, device), _images()
    goods = images[:20]
    client, station = _client(run, folder / "fair")
    log: list[str] = []
    with client as c:
        for name in ("a", "b"):
            _ok(c.post("/v1/profiles", json={"name": name}))
        _ok(c.post("/v1/profiles/b/references", files=[f for p in goods for f in _upload(p)]))
        probe = _upload(images[30])
        _ok(c.post("/v1/profiles/a/detect", files=probe))
        for name in ("a", "b"):
            det = station.detector(name)
            real = det.predict_many

            def logged(batch: Any, real: Any = real, name: str = name) -> Any:
                log.append(name)
                return real(batch)

            det.predict_many = logged  # type: ignore[method-assign,assignment]
        alone = []
        for _ in range(5):
            start = time.perf_counter()
            _ok(c.post("/v1/profiles/a/detect", files=probe))
            alone.append(time.perf_counter() - start)
        answers: list[Any] = []
        start = time.perf_counter()
        calibrating = threading.Thread(target=lambda: answers.append(c.post("/v1/profiles/b/calibrate")))
        calibrating.start()
        while log.count("b") < 3:
            time.sleep(0.001)
        sent, begun = len(log), time.perf_counter()
        _ok(c.post("/v1/profiles/a/detect", files=probe))
        during = time.perf_counter() - begun
        calibrating.join()
        calibrate_s = time.perf_counter() - start
        _ok(answers[0])
    waited = log[sent:].index("a")
    return [
        "",
        f"{model}: a detect on profile A while profile B calibrates on {len(goods)} good "
        f"parts ({len(goods)} leave-one-out passes after the encoding; the calibrate took {calibrate_s:.1f} s):",
        "",
        "| detect on A | seconds | B's passes it waited for (goal <= 2) |",
        "|---|---|---|",
        f"| alone (median of 5) | {statistics.median(alone):.3f} | |",
        f"| during B's calibrate | {during:.3f} | {waited} |",
    ]


def run(quick: bool, device: torch.device) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        rows = verdicts(quick, device, Path(tmp))
        rows += fairness(quick, device, Path(tmp))
        rows += retention(quick, Path(tmp))
    return "\n".join(rows)


if __name__ == "__main__":
    standalone(__doc__, "The station's promises (#30)", run)
