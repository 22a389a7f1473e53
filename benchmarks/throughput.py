"""Images per second end to end from files on disk, peak memory, and the FLOP floor (issue #6 (b), (c), (f)).

End to end = decoding + resizing in DataLoader workers, overlapped with the forward, and maps resized back to each
image's size; it is compared with the forward alone on tensors already in memory. The floor is the FLOPs of one
image's forward (counted by torch's FlopCounterMode) over the measured matrix-multiply peak of the device: no
implementation can beat it. On a GPU: fp32, bf16 and bf16 + torch.compile at 518 px.

    python -m benchmarks.throughput [--quick]
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import standalone
from kanoclip import Detector, KAnoCLIPConfig, RunConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def image_files(n: int) -> list[Path]:
    """Real images from ../shared/data (PNG, JPEG, grayscale, several sizes), repeated up to n."""
    files = sorted((SHARED / "MVTec_AD").rglob("*.png")) + sorted(
        (SHARED / "MVTec_derived_hazelnut_toy").rglob("*.jpg")
    )
    files += sorted(p for p in (SHARED / "KolektorSDD").rglob("Part?.jpg"))[:20]
    if not files:
        raise SystemExit(f"no images under {SHARED}")
    return [files[i % len(files)] for i in range(n)]


def detector(backbone: str, size: int, device: str, precision: str, batch: int, compile: bool = False) -> Detector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = KAnoCLIPConfig(backbone=backbone, pretrained="none", image_size=size)
        run = RunConfig.with_model(
            config, device=device, precision=precision, batch_size=batch, workers=2, compile=compile
        )
        det = Detector.from_config(run)
    det.model.setup(text=None)  # the full model: learned prompts, Bi-CMCI and adapter
    return det


def end_to_end(det: Detector, files: list[Path]) -> float:
    # warm-up: torch.compile compiles on the first batch and again on the second (the text prompts' cache is
    # filled by the first call, which fails a guard), so three batches before the clock starts
    list(det.run(files[: 3 * det.batch_size]))
    start = time.perf_counter()
    n = sum(p.error is None for p in det.run(files))
    return n / (time.perf_counter() - start)


def forward_only(det: Detector, repeats: int = 3) -> float:
    pixels = torch.rand(det.batch_size, 3, det.image_size, det.image_size)
    det.forward(pixels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        det.forward(pixels)  # returns CPU tensors: includes the device sync
        times.append(time.perf_counter() - start)
    return det.batch_size / statistics.median(times)


def flops_per_image(det: Detector) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        det.model(torch.rand(1, 3, det.image_size, det.image_size, device=det.device))
    return float(counter.get_total_flops())


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times[1:])


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_child(backbone: str, size: int, batch: int, device: str) -> None:
    """Run in a fresh process: the model loaded, then one batch; prints the resident and the peak memory (MiB)."""
    det = detector(backbone, size, device, "auto", batch)
    if det.device.type == "cuda":
        loaded = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        det.forward(torch.rand(batch, 3, size, size))
        peak, kind = torch.cuda.max_memory_allocated() / 2**20, "GPU allocated"
    else:
        loaded = _status_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak (VmHWM) to the current RSS
        det.forward(torch.rand(batch, 3, size, size))
        peak, kind = _status_mib("VmHWM"), "process RSS"
    print(json.dumps({"loaded_mib": loaded, "peak_mib": peak, "kind": kind}))


def peak_memory(backbone: str, size: int, batch: int, device: str) -> dict[str, float | str]:
    call = f"peak_memory_child({backbone!r}, {size}, {batch}, {device!r})"
    code = f"from benchmarks.throughput import peak_memory_child; {call}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result: dict[str, float | str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run(quick: bool, device: torch.device) -> str:
    dev = device.type
    cases = [("ViT-B-16", 224, 8)] if dev == "cpu" else [("ViT-B-16", 224, 8), ("ViT-L-14-336", 518, 8)]
    if not quick and dev == "cpu":
        cases.append(("ViT-L-14-336", 518, 4))
    lines = [
        "| backbone | size | precision | batch | end to end from files (img/s) | forward only (img/s) | ratio | "
        "FLOPs/img (G) | floor (img/s) | forward / floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    precisions = [("fp32", False)] if dev == "cpu" else [("fp32", False), ("bf16", False), ("bf16", True)]
    for backbone, size, batch in cases:
        files = image_files(4 * batch if size > 300 and dev == "cpu" else 12 * batch)
        for precision, compiled in precisions:
            det = detector(backbone, size, dev, precision, batch, compiled)
            e2e, fwd = end_to_end(det, files), forward_only(det)
            flops = flops_per_image(det)
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            floor = matmul_peak(det.device, dtype) / flops
            label = precision + (" + compile" if compiled else "")
            lines.append(
                f"| {backbone} | {size} | {label} | {batch} | {e2e:.2f} | {fwd:.2f} | {e2e / fwd:.2f} | "
                f"{flops / 1e9:.1f} | {floor:.2f} | {fwd / floor:.2f} |"
            )
            print(lines[-1], flush=True)
    memory = [
        "",
        "| backbone | size | batch | model loaded (MiB) | peak during the batch (MiB) | measured as |",
        "|---|---|---|---|---|---|",
    ]
    for backbone, size, _ in cases:
        for batch in (1, 8):
            r = peak_memory(backbone, size, batch, dev)
            loaded, peak = float(r["loaded_mib"]), float(r["peak_mib"])
            memory.append(f"| {backbone} | {size} | {batch} | {loaded:.0f} | {peak:.0f} | {r['kind']} |")
            print(memory[-1], flush=True)
    note = (
        "Random weights (speed does not depend on weight values); the full model (learned prompts, Bi-CMCI, "
        "adapter). End to end: real files of ../shared/data decoded in 2 workers. Floor: FLOPs per image over the "
        "measured matmul peak in that precision."
    )
    if dev == "cpu":
        note += " No GPU here: the fp32/bf16/compile rows at 518 need a GPU machine."
    return note + "\n\n" + "\n".join(lines + memory)


def main() -> None:
    standalone(__doc__, "Throughput, peak memory and the FLOP floor", run)


if __name__ == "__main__":
    main()
