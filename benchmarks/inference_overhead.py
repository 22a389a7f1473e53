"""Full KAnoCLIP inference time over the frozen CLIP-VV forward alone, same config, same run (goal: <= 1.10).

The two are measured interleaved (alone, full, alone, full, ...) and compared by their medians, so that slow drift
of a shared machine hits both alike. On a noisy CPU the difference of two multi-second timings is within the noise,
so the head (everything after CLIP, on features already computed) is also timed by itself, which is stable:
(CLIP-VV + head) / CLIP-VV is the second ratio. Random weights: timing does not depend on the weight values.

    python -m benchmarks.inference_overhead [--quick] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch

from benchmarks.common import append_results, machine_description, timed
from kanoclip import KAnoCLIP, KAnoCLIPConfig
from kanoclip.model.clip_vv import encode_image


def measure(backbone: str, size: int, batch: int, repeats: int, device: torch.device) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = KAnoCLIP(KAnoCLIPConfig(backbone=backbone, pretrained="none", image_size=size)).to(device).eval()
    cfg = model.config
    images = torch.rand(batch, 3, size, size, device=device)
    normalised = (images - model.mean) / model.std

    def clip_vv_alone() -> object:
        return encode_image(model.clip.visual, normalised, cfg.vv_start_layer or 1, cfg.tap_layers or ())

    alone, full, head = [], [], []
    with torch.inference_mode():
        feats = model.encode_image(normalised)
        clip_vv_alone(), model(images), model.head(feats, (size, size))  # warm-up
        for _ in range(repeats):
            alone.append(timed(clip_vv_alone, device))
            full.append(timed(lambda: model(images), device))
            head.append(timed(lambda: model.head(feats, (size, size)), device))
    a, f, h = statistics.median(alone), statistics.median(full), statistics.median(head)
    return {"clip_vv_s": a, "full_s": f, "ratio": f / a, "head_s": h, "head_ratio": (a + h) / a}


def run(quick: bool, repeats: int, device: torch.device) -> str:
    cases = [("ViT-B-16", 224, 1), ("ViT-B-16", 224, 8)]
    if not quick:
        cases += [("ViT-L-14-336", 518, 1), ("ViT-L-14-336", 518, 8)]
    rows = [
        "| backbone | size | batch | CLIP-VV alone (s) | full inference (s) | full / alone (goal <= 1.10) "
        "| head alone (s) | (alone + head) / alone |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backbone, size, batch in cases:
        r = measure(backbone, size, batch, repeats, device)
        rows.append(
            f"| {backbone} | {size} | {batch} | {r['clip_vv_s']:.4f} | {r['full_s']:.4f} | {r['ratio']:.3f} | "
            f"{r['head_s']:.4f} | {r['head_ratio']:.3f} |"
        )
        print(rows[-1], flush=True)
    return f"medians of {repeats} interleaved repeats per row\n\n" + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ViT-B-16 at 224 only")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-append", action="store_true", help="print only, do not append to RESULTS.md")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = run(args.quick, args.repeats, device)
    if not args.no_append:
        append_results("Full inference over the CLIP-VV forward alone", f"{machine_description(device)}\n\n{text}")


if __name__ == "__main__":
    main()
