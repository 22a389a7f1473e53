"""`kanoclip watch --mqtt` (issue #31): watch's throughput with every result published to a broker, against the same
watch without it and against `kanoclip detect` on the same folder (goal: both ratios >= 0.9), and the latency from a
file closed in the watched folder to its message at a subscriber (median, p95) beside the latency to its result
recorded. The broker is Debian's mosquitto on 127.0.0.1 (`tests/support/mosquitto.py`); the subscriber a paho client.

    python -m benchmarks.mqtt [--quick] [--no-append]
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import standalone
from benchmarks.throughput import image_files
from benchmarks.watch import feeding, watch_detector
from kanoclip import Detector
from kanoclip.inference.outputs import detect_files
from kanoclip.station.sinks.config import SinkConfig
from kanoclip.station.station import Station, backend_key
from kanoclip.station.watch.watcher import LocalScorer, WatchConfig, Watcher
from tests.support.mosquitto import mosquitto, subscribed


def _station(detector: Detector, state: Path) -> Station:
    run = detector.run_config
    station = Station.open(run, state)
    station.backends[backend_key(run)] = detector.backend  # the same model in memory for every watcher
    station.configure("default", run)
    return station


def _watch_rate(detector: Detector, folder: Path, state: Path, cfg: WatchConfig, n: int) -> float:
    """Images/s of one watcher over the files already in `folder`, until the last is scored and its sinks closed
    (with MQTT: every message acknowledged by the broker)."""
    start = time.perf_counter()
    watcher = Watcher(LocalScorer(_station(detector, state), "default"), [str(folder)], cfg)
    watcher.run(until=lambda: watcher.counts["scored"] >= n)
    return n / (time.perf_counter() - start)


def _p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(0.95 * len(values)) - 1)]


def run(quick: bool, device: torch.device) -> str:
    detector, n = watch_detector(quick, device), 64
    files = image_files(n)
    plain = WatchConfig(progress=False, batch=8)
    with tempfile.TemporaryDirectory() as tmp, mosquitto() as broker, subscribed(broker, "bench") as sub:
        root = Path(tmp)
        folder = root / "folder"
        folder.mkdir()
        for i, f in enumerate(files):
            shutil.copy(f, folder / f"{i:03d}{f.suffix}")
        with_mqtt = dataclasses.replace(plain, sinks=SinkConfig(mqtt=broker.url("bench")))
        detect_files(detector, [folder], root / "warm", save_maps=True)  # warm-up
        start = time.perf_counter()
        detect_files(detector, [folder], root / "detect", save_maps=True)
        detect_rate = n / (time.perf_counter() - start)
        # alternated, each on its own state (a state records each file once), twice: the better of each
        rates: dict[str, list[float]] = {"plain": [], "mqtt": []}
        for turn in range(2):
            rates["plain"].append(_watch_rate(detector, folder, root / f"plain{turn}", plain, n))
            rates["mqtt"].append(_watch_rate(detector, folder, root / f"mqtt{turn}", with_mqtt, n))
        assert len(sub.messages()) >= 2 * n, f"{len(sub.messages())} messages for {2 * n} results"
        plain_rate, mqtt_rate = max(rates["plain"]), max(rates["mqtt"])

        inbox = root / "inbox"
        inbox.mkdir()
        closed: dict[str, float] = {}
        recorded: dict[str, float] = {}
        watcher = Watcher(LocalScorer(_station(detector, root / "live"), "default"), [str(inbox)], with_mqtt)

        def on_result(result: dict[str, Any]) -> None:
            recorded[Path(str(result["source"])).name] = time.monotonic()

        watcher.on_result = on_result
        k = 16 if quick else 24
        before = len(sub.messages())
        gap = 0.5 if quick else 1.0
        feeder = feeding(files[:k], inbox, closed, gap)
        watcher.run(until=lambda: len(sub.messages()) - before >= k)
        feeder.join()
        arrived = {Path(m["source"]).name: at for (_, m, _), at in zip(sub.messages(), sub.arrived, strict=True)}
    to_message = [arrived[name] - at for name, at in closed.items()]
    to_record = [recorded[name] - at for name, at in closed.items()]
    return "\n".join(
        [
            f"{detector.config.backbone} at {detector.image_size}, {n} real images in one folder, batch 8, maps and "
            "overlays written by both; watch "
            f"records each result in the station (SQLite + store), --settle-s {plain.settle_s:g}; with --mqtt each "
            "result is also published (QoS 1, retained) to mosquitto on 127.0.0.1 through the state's outbox, and "
            "the timing ends once every message is acknowledged; the better of two alternated runs each",
            "",
            "| command | images/s | / detect (goal >= 0.9) | / watch without MQTT (goal >= 0.9) |",
            "|---|---|---|---|",
            f"| detect FOLDER | {detect_rate:.2f} | | |",
            f"| watch FOLDER | {plain_rate:.2f} | {plain_rate / detect_rate:.3f} | |",
            f"| watch FOLDER --mqtt | {mqtt_rate:.2f} | {mqtt_rate / detect_rate:.3f} | {mqtt_rate / plain_rate:.3f} |",
            "",
            f"Latency from a file closed in the watched folder, {k} files one every {gap:g} s:",
            "",
            "| to | median (s) | p95 (s) |",
            "|---|---|---|",
            f"| its result recorded | {statistics.median(to_record):.3f} | {_p95(to_record):.3f} |",
            f"| its MQTT message at a subscriber | {statistics.median(to_message):.3f} | {_p95(to_message):.3f} |",
            f"| the difference (MQTT's share) | {statistics.median(to_message) - statistics.median(to_record):.3f} "
            f"| {_p95(to_message) - _p95(to_record):.3f} |",
        ]
    )


if __name__ == "__main__":
    standalone(__doc__, "watch --mqtt", run)
