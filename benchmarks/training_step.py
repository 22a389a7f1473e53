"""Training step time (forward with the losses' outputs, backward through the frozen text tower, Adam) against the
inference forward of the same batch, same run. Random weights and targets: timing does not depend on them.

    python -m benchmarks.training_step [--quick]
"""

from __future__ import annotations

import statistics
import warnings

import torch
import torch.nn.functional as F

from benchmarks.common import standalone, timed
from kanoclip import KAnoCLIP, KAnoCLIPConfig
from kanoclip.model.losses import KnowledgeTargets, total_loss


def measure(backbone: str, size: int, batch: int, repeats: int, device: torch.device) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = KAnoCLIP(KAnoCLIPConfig(backbone=backbone, pretrained="none", image_size=size)).to(device)
    dim = model.clip.visual.output_dim
    targets = KnowledgeTargets(
        F.normalize(torch.randn(6, dim, device=device), dim=-1), F.normalize(torch.randn(9, dim, device=device), dim=-1)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.999))
    images = torch.rand(batch, 3, size, size, device=device)
    labels = torch.arange(batch, device=device) % 2
    masks = (torch.rand(batch, size, size, device=device) > 0.95).float()

    def step() -> None:
        model.train()
        out = model.forward_train(images)
        loss = total_loss(model.config, out.text, out.image_logits, out.level_probs, labels, masks, targets)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer() -> None:
        model.eval()
        with torch.inference_mode():
            model(images)

    step(), infer()
    steps, infers = [], []
    for _ in range(repeats):
        steps.append(timed(step, device))
        infers.append(timed(infer, device))
    s, i = statistics.median(steps), statistics.median(infers)
    return {"step_s": s, "infer_s": i, "ratio": s / i}


def run(quick: bool, device: torch.device, repeats: int = 3) -> str:
    cases = [("ViT-B-16", 224, 8)]
    if not quick or device.type == "cuda":
        cases.append(("ViT-L-14-336", 518, 8 if device.type == "cuda" else 2))
    rows = [
        "| backbone | size | batch | training step (s) | inference (s) | step / inference |",
        "|---|---|---|---|---|---|",
    ]
    for backbone, size, batch in cases:
        r = measure(backbone, size, batch, repeats, device)
        rows.append(f"| {backbone} | {size} | {batch} | {r['step_s']:.3f} | {r['infer_s']:.3f} | {r['ratio']:.2f} |")
        print(rows[-1], flush=True)
    return f"fp32, median of {repeats} interleaved repeats\n\n" + "\n".join(rows)


def main() -> None:
    standalone(__doc__, "Training step time", run)


if __name__ == "__main__":
    main()
