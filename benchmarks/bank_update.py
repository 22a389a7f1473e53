"""A detect sent while a full reference bank is being updated (issue #19): the coreset that keeps the bank within
`reference_max_patches` runs beside the forward passes, so the detect should wait at most for the new image's
encoding, not for the reduction. Measured over HTTP against the real server, in one run:

- a detect alone (the forward batch it takes),
- one add to a full bank (encoding plus coreset),
- a detect sent while that add's reduction runs.

    python -m benchmarks.bank_update [--quick] [--no-append]     # --quick: a 5,000-patch bank
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import torch

from benchmarks.common import standalone
from kanoclip import Detector, KAnoCLIPConfig, RunConfig
from kanoclip.station.serve import ServeConfig
from tests.support.serving import running_server


def png(seed: int, size: int = 224) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def run(quick: bool, device: torch.device) -> str:
    limit = 5_000 if quick else 20_000
    config = KAnoCLIPConfig(backbone="ViT-B-16", pretrained="none", image_size=224, reference_max_patches=limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector.from_config(RunConfig.with_model(config, device=device.type, workers=0))
    patches = (224 // 16) ** 2
    det.add_references([png(i) for i in range(limit // patches + 1)])  # past the limit: the bank is full
    query = [("files", ("q.png", png(10_000)))]
    with running_server(det, ServeConfig(max_reference_images=10_000)) as url:
        httpx.post(f"{url}/v1/detect", files=query, timeout=300)  # warm-up
        start = time.perf_counter()
        httpx.post(f"{url}/v1/detect", files=query, timeout=300)
        alone = time.perf_counter() - start
        with ThreadPoolExecutor(max_workers=1) as pool:
            start = time.perf_counter()
            adding = pool.submit(
                httpx.post, f"{url}/v1/references", files=[("files", ("n.png", png(20_000)))], timeout=3600
            )
            time.sleep(max(2 * alone, 0.5))  # past the new image's encoding: the reduction is running
            sent = time.perf_counter()
            r = httpx.post(f"{url}/v1/detect", files=query, timeout=3600)
            during = time.perf_counter() - sent
            still_reducing = not adding.done()
            add = adding.result()
            add_time = time.perf_counter() - start
    assert r.status_code == 200 and add.status_code == 200, (r.text, add.text)
    return "\n".join(
        [
            f"ViT-B-16 (random) at 224, a full bank of {limit:,} patches per level, one image per request.",
            "",
            "| what | seconds | × a detect alone |",
            "|---|---|---|",
            f"| detect alone | {alone:.2f} | 1.00 |",
            f"| add one good part to the full bank (encode + coreset) | {add_time:.1f} | {add_time / alone:.0f} |",
            f"| detect sent during that add's reduction | {during:.2f} | {during / alone:.2f} |",
            "",
            f"The add was still reducing when the detect was answered: {still_reducing}.",
        ]
    )


if __name__ == "__main__":
    standalone(__doc__, "A detect during a full bank's update (issue #19)", run)
