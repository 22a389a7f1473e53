"""What every benchmark records beside its numbers: the machine, the date and the versions."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        where = f"GPU {torch.cuda.get_device_name(device)}"
    else:
        cpu = platform.processor() or platform.machine()
        where = f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return (
        f"- machine: {where}\n- date: {datetime.date.today().isoformat()}\n"
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"open_clip {open_clip.__version__}, numpy {np.__version__}"
    )


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call, with the GPU's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def append_results(title: str, body: str) -> None:
    with RESULTS.open("a") as f:
        f.write(f"\n## {title}\n\n{body}\n")


def standalone(doc: str | None, title: str, run: Callable[[bool, torch.device], str]) -> None:
    """The command line of a benchmark run by itself: --quick, --no-append; results appended under `title`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small cases only")
    parser.add_argument("--no-append", action="store_true", help="print only, do not append to RESULTS.md")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = run(args.quick, device)
    print(text)
    if not args.no_append:
        append_results(title, f"{machine_description(device)}\n\n{text}")
