"""A bounded load against the local `kanoclip serve`: concurrent clients, a fixed number of requests, with and without
micro-batching in the same run. Every request must be answered; throughput and p50/p95 latency are recorded.

    python -m benchmarks.serve_load [--clients 8] [--requests 64] [--backbone ViT-B-16 --size 224]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from benchmarks.common import append_results, machine_description
from benchmarks.throughput import image_files
from kanoclip import Detector, KAnoCLIPConfig, RunConfig
from kanoclip.station.serve import ServeConfig
from tests.support.serving import running_server


def load(url: str, files: list[Path], clients: int) -> dict[str, float]:
    payloads = [(p.name, p.read_bytes()) for p in files]

    def post(payload: tuple[str, bytes]) -> tuple[int, float]:
        start = time.perf_counter()
        response = httpx.post(f"{url}/v1/detect", files=[("files", payload)], timeout=300)
        return response.status_code, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(post, payloads))
    wall = time.perf_counter() - start
    latencies = sorted(t for _, t in results)
    return {
        "answered": sum(code == 200 for code, _ in results),
        "sent": len(results),
        "throughput": len(results) / wall,
        "p50": statistics.median(latencies),
        "p95": latencies[min(len(latencies) - 1, round(0.95 * len(latencies)) - 1)],
    }


def run(clients: int, requests: int, backbone: str, size: int, device: torch.device) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = KAnoCLIPConfig(backbone=backbone, pretrained="none", image_size=size)
        detector = Detector.from_config(RunConfig.with_model(config, device=device.type, workers=0))
    files = image_files(requests)
    rows = [
        f"{backbone} at {size}, {clients} concurrent clients, {requests} requests of one real image each",
        "",
        "| server | answered / sent | throughput (req/s) | p50 latency (s) | p95 latency (s) |",
        "|---|---|---|---|---|",
    ]
    for label, config in (
        ("micro-batching (max batch 8, wait 10 ms)", ServeConfig(max_batch=8, max_wait_ms=10)),
        ("no batching (max batch 1)", ServeConfig(max_batch=1)),
    ):
        with running_server(detector, config) as url:
            load(url, files[:clients], clients)  # warm-up
            r = load(url, files, clients)
        rows.append(
            f"| {label} | {r['answered']:.0f} / {r['sent']:.0f} | {r['throughput']:.2f} | {r['p50']:.3f} | "
            f"{r['p95']:.3f} |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = run(args.clients, args.requests, args.backbone, args.size, device)
    if not args.no_append:
        append_results("Serving under load", f"{machine_description(device)}\n\n{text}")


if __name__ == "__main__":
    main()
