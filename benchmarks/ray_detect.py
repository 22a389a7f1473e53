"""Ray detect vs local detect on this machine (issue #15): the same images, the same model, the same outputs.

Goal: Ray's throughput >= 0.8x local on one node (the engine's overhead is bounded). The Ray instance is started
before timing (its start-up is a one-off per cluster, not per image) on 127.0.0.1 with the dashboard off. Random
ViT-B-16 weights at 224: speed does not depend on weight values.

    python -m benchmarks.ray_detect [--quick] [--no-append]
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks.common import standalone
from kanoclip import KAnoCLIPConfig
from kanoclip.inference.config import RunConfig
from kanoclip.inference.detector import Detector
from kanoclip.inference.outputs import detect_files
from kanoclip.inference.scale_out import detect_on_ray

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run(quick: bool, device: torch.device) -> str:
    import ray

    images = sorted((DATA / "MVTec_derived_hazelnut_toy").rglob("*/*/*.jpg"))
    images = [p for p in images if "ground_truth" not in p.parts]
    images = (images * 4)[: 48 if quick else 96]
    config = KAnoCLIPConfig(backbone="ViT-B-16", pretrained="none", image_size=224)
    run = RunConfig.with_model(config, device="cpu", workers=0, batch_size=8)
    rows = ["| path | images | seconds | images/s | × local |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = Path(tmp) / "in"
        folder.mkdir()
        for i, p in enumerate(images):
            shutil.copy(p, folder / f"{i:03d}_{p.name}")
        start = time.perf_counter()  # both timings include building the model, as each command does
        detect_files(Detector.from_config(run.replace(workers=1)), [folder], Path(tmp) / "local")
        local = time.perf_counter() - start
        rows.append(
            f"| local detect (1 decoding worker) | {len(images)} | {local:.1f} | {len(images) / local:.2f} | 1.00 |"
        )
        ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
        try:
            start = time.perf_counter()
            detect_on_ray(run, [str(folder)], Path(tmp) / "ray", workers=1)
            remote = time.perf_counter() - start
        finally:
            ray.shutdown()
        rows.append(
            f"| Ray detect (1 actor, decoding in tasks) | {len(images)} | {remote:.1f} | {len(images) / remote:.2f} | "
            f"{local / remote:.2f} |"
        )
    return (
        "Wall time of one run each, model built and outputs written (maps, overlays, scores); Ray's start "
        "excluded.\n\n" + "\n".join(rows)
    )


if __name__ == "__main__":
    standalone(__doc__, "Ray detect vs local detect on one node (issue #15)", run)
