"""Export engines (issue #14): throughput of PyTorch fp32 and bf16 autocast, ONNX Runtime fp32 and OpenVINO
fp32/bf16/int8 on this CPU, each with its agreement to PyTorch fp32 on real images (max and mean map error, Pearson
of maps, Spearman of scores). Random weights: speed and agreement do not depend on weight values; no quality here.

Goal: the best reduced-precision engine >= 2x PyTorch fp32 with score Spearman >= 0.99 and map Pearson >= 0.99;
OpenVINO fp32 >= 1.0x.

    python -m benchmarks.export_engines [--quick] [--no-append]     # --quick: ViT-B-16 at 224 only
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from benchmarks.common import standalone
from kanoclip import KAnoCLIPConfig
from kanoclip.data.images import read_image
from kanoclip.inference.config import RunConfig
from kanoclip.inference.detector import Detector, to_tensor
from kanoclip.inference.export import export

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ENGINES = [
    ("PyTorch fp32", "torch", "fp32"),
    ("PyTorch bf16 autocast", "torch", "bf16"),
    ("ONNX Runtime fp32", "onnx", "fp32"),
    ("OpenVINO fp32", "openvino", "fp32"),
    ("OpenVINO bf16", "openvino", "bf16"),
    ("OpenVINO int8 (NNCF)", "openvino", "int8"),
]


def real_images(n: int = 24) -> list[Path]:
    files = sorted((DATA / "MVTec_derived_hazelnut_toy").rglob("test/*/*.jpg"))[:10]
    files += sorted((DATA / "MVTec_AD" / "bottle" / "test").rglob("*.png"))[:8]
    files += sorted((DATA / "KolektorSDD").rglob("Part*.jpg"))[:6]
    return [p for p in files if "_label" not in p.name][:n]


def median_time(det: Detector, pixels: torch.Tensor, repeats: int) -> float:
    det.forward(pixels)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        det.forward(pixels)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def case(
    backbone: str, size: int, repeats: int, workdir: Path, batches: tuple[int, ...] = (1, 8), n_images: int = 24
) -> list[str]:
    config = KAnoCLIPConfig(backbone=backbone, pretrained="none", image_size=size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = Detector.from_config(RunConfig.with_model(config, device="cpu", workers=0, precision="fp32"))
    files = real_images(n_images)
    pixels = torch.stack([to_tensor(read_image(p), size) for p in files])
    calibration = sorted((DATA / "MVTec_derived_hazelnut_toy").rglob("train/good/*"))[:16]
    reference_scores, reference_maps = base.forward(pixels)
    rows, fp32_times = [], {}
    for label, fmt, precision in ENGINES:
        if fmt == "torch":
            det = (
                base
                if precision == "fp32"
                else Detector.from_config(RunConfig.with_model(config, device="cpu", workers=0, precision="bf16"))
            )
        else:
            folder = workdir / f"{backbone}-{size}-{fmt}-{precision}"
            start = time.perf_counter()
            export(base, folder, fmt, precision, calibration if precision == "int8" else ())
            print(f"  exported {label} in {time.perf_counter() - start:.0f} s", flush=True)
            engine = "onnxruntime" if fmt == "onnx" else "openvino"
            det = Detector.from_config(RunConfig(engine=engine, exported=str(folder), workers=0))
        scores, maps = det.forward(pixels)
        error = (maps - reference_maps).abs()
        pearson = float(np.corrcoef(maps.flatten().numpy(), reference_maps.flatten().numpy())[0, 1])
        spearman = float(spearmanr(scores.numpy(), reference_scores.numpy()).statistic)
        for batch in batches:
            t = median_time(det, pixels[:batch], repeats)
            fp32_times.setdefault(batch, t)
            rows.append(
                f"| {backbone} | {size} | {label} | {batch} | {batch / t:.2f} | {fp32_times[batch] / t:.2f} | "
                f"{float(error.max()):.2e} | {float(error.mean()):.2e} | {pearson:.5f} | {spearman:.4f} |"
            )
            print(rows[-1], flush=True)
    return rows


def run(quick: bool, device: torch.device) -> str:
    # ViT-L@518 on 2 CPU cores: ~9 s an image in fp32, so batch 1, one timed repeat and 8 images for agreement
    cases = [("ViT-B-16", 224, 3 if quick else 5, (1, 8), 24)]
    if not quick:
        cases.append(("ViT-L-14-336", 518, 1, (1,), 8))
    head = [
        "| backbone | size | engine | batch | images/s | × PyTorch fp32 | max map err | mean map err | map Pearson "
        "| score Spearman |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as workdir:
        rows = [row for b, s, repeats, batches, n in cases for row in case(b, s, repeats, Path(workdir), batches, n)]
    return (
        "Forward only (decoding excluded), medians; agreement with PyTorch fp32 over 24 real images (8 at ViT-L) "
        "(hazelnut, MVTec bottle, KolektorSDD); int8 calibrated on 16 hazelnut train images.\n\n"
        + "\n".join(head + rows)
    )


if __name__ == "__main__":
    standalone(__doc__, "Export engines on this CPU (issue #14)", run)
