"""Every benchmark in one run on the machine at hand, appended to RESULTS.md as one section (issue #6).

(a) full inference over the CLIP-VV forward alone, (b) images/s end to end from files, (c) peak memory, (d) training
step time, (e) AUPRO against the 200-threshold loop, (f) on a GPU: fp32, bf16 and torch.compile at 518 beside the
FLOP floor, and the serving load test.

    python -m benchmarks.run            # everything (ViT-L on a CPU takes tens of minutes)
    python -m benchmarks.run --quick    # ViT-B-16 at 224 only on a CPU, 20 AUPRO maps
"""

from __future__ import annotations

import argparse

import torch

from benchmarks import aupro_speed, inference_overhead, serve_load, throughput, training_step
from benchmarks.common import append_results, machine_description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sections = [
        (
            "(a) Full inference over the CLIP-VV forward alone (goal <= 1.10)",
            lambda: inference_overhead.run(args.quick, 5, device),
        ),
        ("(b, c, f) Throughput from files, peak memory, FLOP floor", lambda: throughput.run(args.quick, device)),
        ("(d) Training step", lambda: training_step.run(args.quick, device)),
        (
            "(e) AUPRO: exact vs the 200-threshold loop (goal >= 50x)",
            lambda: aupro_speed.run(20 if args.quick else 100, 518),
        ),
        ("Serving under load", lambda: serve_load.run(8, 64, "ViT-B-16", 224, device)),
    ]
    parts = []
    for title, fn in sections:
        print(f"== {title}", flush=True)
        body = fn()
        print(body, flush=True)
        parts.append(f"### {title}\n\n{body}")
    text = machine_description(device) + "\n\n" + "\n\n".join(parts)
    if not args.no_append:
        append_results(f"Benchmark suite ({'quick' if args.quick else 'full'})", text)


if __name__ == "__main__":
    main()
