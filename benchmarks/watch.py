"""`kanoclip watch` against `kanoclip detect` on the same folder (goal: watch >= 0.9x detect's images/s), and the
latency from a file closed in the watched folder to its result recorded (median, p95), with the default settle time.

    python -m benchmarks.watch [--quick] [--no-append]
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import standalone
from benchmarks.throughput import image_files
from kanoclip import Detector, KAnoCLIPConfig, RunConfig
from kanoclip.inference.outputs import detect_files
from kanoclip.station.station import Station, backend_key
from kanoclip.station.watch.watcher import LocalScorer, WatchConfig, Watcher


def watch_detector(quick: bool, device: torch.device) -> Detector:
    """The model these watch benchmarks score with: the tiny one (--quick) or ViT-B-16 at 224, random weights."""
    backbone, size = ("kanoclip-tiny", 112) if quick else ("ViT-B-16", 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = KAnoCLIPConfig(backbone=backbone, pretrained="none", image_size=size)
        return Detector.from_config(RunConfig.with_model(config, device=device.type, workers=2, batch_size=8))


def feeding(files: list[Path], inbox: Path, closed: dict[str, float], gap: float) -> threading.Thread:
    """A thread that copies `files` into `inbox` one by one, `gap` seconds apart (slower than the model: latency, not
    queueing), noting in `closed` when each was written and closed."""

    def feed() -> None:
        time.sleep(1.0)
        for i, path in enumerate(files):
            name = f"live_{i:03d}{path.suffix}"
            shutil.copy(path, inbox / name)  # returns once the file is written and closed
            closed[name] = time.monotonic()
            time.sleep(gap)

    thread = threading.Thread(target=feed)
    thread.start()
    return thread


def run(quick: bool, device: torch.device) -> str:
    detector, n = watch_detector(quick, device), 64
    files = image_files(n)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "folder"
        folder.mkdir()
        for i, f in enumerate(files):
            shutil.copy(f, folder / f"{i:03d}{f.suffix}")
        detect_files(detector, [folder], root / "warm", save_maps=True)  # warm-up
        start = time.perf_counter()
        detect_files(detector, [folder], root / "detect", save_maps=True)
        detect_rate = n / (time.perf_counter() - start)

        run_cfg = detector.run_config
        station = Station.open(run_cfg, root / "state")
        station.backends[backend_key(run_cfg)] = detector.backend  # the same model in memory
        station.configure("default", run_cfg)
        scorer = LocalScorer(station, "default")
        cfg = WatchConfig(settle_s=1.0, progress=False, batch=8)
        start = time.perf_counter()
        watcher = Watcher(scorer, [str(folder)], cfg)
        watcher.run(until=lambda: watcher.counts["scored"] >= n)
        watch_rate = n / (time.perf_counter() - start)

        inbox = root / "inbox"
        inbox.mkdir()
        closed: dict[str, float] = {}
        latencies: list[float] = []
        watcher = Watcher(scorer, [str(inbox)], cfg)

        def recorded(result: dict[str, Any]) -> None:
            latencies.append(time.monotonic() - closed[Path(str(result["source"])).name])

        watcher.on_result = recorded
        k = 16 if quick else 24
        gap = 0.5 if quick else 1.0
        feeder = feeding(files[:k], inbox, closed, gap)
        watcher.run(until=lambda: len(latencies) >= k)
        feeder.join()
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, round(0.95 * len(latencies)) - 1)]
    return "\n".join(
        [
            f"{detector.config.backbone} at {detector.image_size}, {n} real images in one folder, batch 8, maps and "
            "overlays written by both; watch "
            "records each result in the station (SQLite + store) and waits --settle-s 1.0 before a file counts as "
            "complete",
            "",
            "| command | images/s | watch / detect (goal >= 0.9) |",
            "|---|---|---|",
            f"| detect FOLDER | {detect_rate:.2f} | |",
            f"| watch FOLDER (files there at start) | {watch_rate:.2f} | {watch_rate / detect_rate:.3f} |",
            "",
            f"Latency from a file closed in the watched folder to its result recorded, {k} files one every {gap:g} s:",
            "",
            "| median (s) | p95 (s) | of which the settle time (s) |",
            "|---|---|---|",
            f"| {statistics.median(latencies):.3f} | {p95:.3f} | 1.0 |",
        ]
    )


if __name__ == "__main__":
    standalone(__doc__, "watch vs detect", run)
