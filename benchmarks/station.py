"""What the station costs (issue #20): serving throughput with the history recorded vs without (goal: recording
costs <= 5%), one profile's last 100 results at 1,000,000 rows in SQLite (goal < 50 ms), the state folder's bytes
per result, and migrations from an empty database and from the previous schema (revision 0001, 1M rows).

    python -m benchmarks.station [--quick] [--no-append]
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from sqlalchemy import insert

from benchmarks.common import standalone
from benchmarks.serve_load import load
from benchmarks.throughput import image_files
from kanoclip import Detector, KAnoCLIPConfig, RunConfig
from kanoclip.station import db
from kanoclip.station.serve import ServeConfig
from kanoclip.station.station import Station, backend_key
from tests.support.serving import running_server


def serving(quick: bool, device: torch.device, folder: Path) -> tuple[list[str], Station]:
    """The same model behind a station that keeps nothing and one that records every result, alternated."""
    backbone, size = ("kanoclip-tiny", 112) if quick else ("ViT-B-16", 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = KAnoCLIPConfig(backbone=backbone, pretrained="none", image_size=size)
        detector = Detector.from_config(RunConfig.with_model(config, device=device.type, workers=0))
    run = detector.run_config
    keeping = Station.open(run, folder)
    keeping.backends[backend_key(run)] = detector.backend  # the same model in memory for both servers
    keeping.configure("default", run)
    forgetting = Station.around(detector)
    requests, clients = 64, 8
    files = image_files(requests)
    rates: dict[str, list[float]] = {"without state": [], "with state": []}
    for _ in range(2 if quick else 3):
        for label, station in (("without state", forgetting), ("with state", keeping)):
            with running_server(station, ServeConfig(max_batch=8, max_wait_ms=10)) as url:
                load(url, files[:clients], clients)  # warm-up
                r = load(url, files, clients)
            assert r["answered"] == r["sent"], r
            rates[label].append(r["throughput"])
    without, with_state = statistics.median(rates["without state"]), statistics.median(rates["with state"])
    rows = [
        f"{backbone} at {size}, {clients} concurrent clients, {requests} requests of one real image each, "
        f"{len(rates['with state'])} alternating repeats (median); with state: SQLite (WAL, synchronous=FULL) and "
        "the store, each file fsynced",
        "",
        "| server | throughput (req/s, median) | repeats | with / without (goal >= 0.95) |",
        "|---|---|---|---|",
        f"| without state (--no-state) | {without:.2f} | {', '.join(f'{x:.2f}' for x in rates['without state'])} | |",
        f"| with state | {with_state:.2f} | {', '.join(f'{x:.2f}' for x in rates['with state'])} | "
        f"{with_state / without:.3f} |",
    ]
    return rows, keeping


def bytes_per_result(station: Station, folder: Path) -> list[str]:
    assert station.engine is not None and station.store is not None
    rows, _ = station.results(limit=1000)
    n = len(list(station.iter_results()))
    store = station.store.size_bytes()
    database = sum(p.stat().st_size for p in folder.glob(f"{db.DATABASE_FILE}*"))
    images = {r["image_sha256"] for r in rows}
    image_bytes = sum(station.store.path(h).stat().st_size for h in images if h)
    overlays = sum(station.store.path(r["overlay_sha256"]).stat().st_size for r in rows if r["overlay_sha256"])
    maps = sum(station.store.path(r["map_sha256"]).stat().st_size for r in rows if r["map_sha256"])
    per = max(len(rows), 1)
    return [
        "",
        f"State folder after {n} results of {len(images)} distinct images (equal images are stored once):",
        "",
        "| what | bytes |",
        "|---|---|",
        f"| store, all files | {store:,} |",
        f"| database (SQLite + WAL) | {database:,} |",
        f"| per result: (store + database) / results | {(store + database) // max(n, 1):,} |",
        f"| per result: overlay PNG (mean) | {overlays // per:,} |",
        f"| per result: float16 map (mean) | {maps // per:,} |",
        f"| per distinct image: the upload as sent (mean) | {image_bytes // max(len(images), 1):,} |",
    ]


def fill(url: str, rows: int, profiles: int = 10) -> float:
    """`rows` results over `profiles` profiles, inserted in chunks; seconds taken."""
    engine = db.create(url)
    start, chunk, now = time.perf_counter(), 20_000, time.time()
    with engine.begin() as c:
        for first in range(0, rows, chunk):
            c.execute(
                insert(db.results),
                [
                    {
                        "created_at": now - (rows - i),
                        "profile": f"p{i % profiles}",
                        "source": f"line/{i:07d}.png",
                        "image_sha256": f"{i:064x}",
                        "stored_bytes": 300_000,
                        "score": (i % 1000) / 1000,
                        "label": int(i % 17 == 0),
                        "image_threshold": 0.5,
                        "engine": "torch",
                        "precision": "fp32",
                        "latency_ms": 12.5,
                    }
                    for i in range(first, min(first + chunk, rows))
                ],
            )
    engine.dispose()
    return time.perf_counter() - start


def history(quick: bool, folder: Path) -> list[str]:
    from alembic import command

    n = 100_000 if quick else 1_000_000
    url = db.database_url(folder)
    start = time.perf_counter()
    engine = db.create(url)
    command.upgrade(db._alembic_config(engine), "0001")  # type: ignore[arg-type]
    engine.dispose()
    empty_to_0001 = time.perf_counter() - start
    filled = fill(url, n)
    start = time.perf_counter()
    db.connect(url).dispose()  # 0001 -> head, with n rows in place
    upgrade = time.perf_counter() - start
    fresh = folder / "fresh"
    fresh.mkdir()
    start = time.perf_counter()
    db.connect(db.database_url(fresh)).dispose()
    empty_to_head = time.perf_counter() - start

    station = Station(RunConfig(), db.connect(url), None)
    station.results(profile="p3", limit=100)  # the first query opens the file and warms the page cache
    times = {"last 100 of one profile": [], "next page (cursor)": [], "last 100 defects of one profile": []}
    cursor = None
    for _ in range(20):
        start = time.perf_counter()
        page, cursor = station.results(profile="p3", limit=100)
        times["last 100 of one profile"].append(time.perf_counter() - start)
        assert len(page) == 100
        start = time.perf_counter()
        station.results(profile="p3", limit=100, cursor=cursor)
        times["next page (cursor)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        station.results(profile="p3", label=1, limit=100)
        times["last 100 defects of one profile"].append(time.perf_counter() - start)
    out = [
        "",
        f"History in SQLite with {n:,} results over 10 profiles (filled in {filled:.1f} s), 20 repeats:",
        "",
        "| query | median (ms) | max (ms) | goal |",
        "|---|---|---|---|",
    ]
    for label, values in times.items():
        goal = "< 50 ms" if label == "last 100 of one profile" else ""
        out.append(f"| {label} | {1000 * statistics.median(values):.2f} | {1000 * max(values):.2f} | {goal} |")
    out += [
        "",
        "| migration | seconds |",
        "|---|---|",
        f"| empty -> 0001 | {empty_to_0001:.3f} |",
        f"| empty -> head ({db.head_revision()}) | {empty_to_head:.3f} |",
        f"| 0001 with {n:,} results -> head ({db.head_revision()}) | {upgrade:.3f} |",
    ]
    return out


def run(quick: bool, device: torch.device) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        rows, station = serving(quick, device, Path(tmp) / "serve")
        rows += bytes_per_result(station, Path(tmp) / "serve")
        rows += history(quick, Path(tmp))
    return "\n".join(rows)


if __name__ == "__main__":
    standalone(__doc__, "The inspection station", run)
