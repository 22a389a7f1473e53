"""Training on an auxiliary dataset's test split (SPEC §4, §7): a plain loop, resumable, DDP under `torchrun`.

Everything that decides the next step lives in one state file (learnable weights, Adam state, step, RNG), written
atomically every `checkpoint_every` steps and at each epoch's end. The data order of epoch e is a permutation drawn
from seed + e alone, so a run killed at any point and resumed takes exactly the steps it would have taken: on CPU
the final weights are bitwise those of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from kanoclip._files import atomic_write_bytes
from kanoclip.data.datasets import DatasetIndex, Sample
from kanoclip.data.datasets.base import sample_image, sample_mask
from kanoclip.errors import ConfigError, KnowledgeError
from kanoclip.inference.detector import to_tensor
from kanoclip.inference.devices import autocast_dtype, die_with_parent, resolve_device
from kanoclip.inference.distributed import init_distributed
from kanoclip.knowledge import KnowledgeBase, encode_sentences, knowledge_targets
from kanoclip.knowledge.base import ImageKnowledge, image_key
from kanoclip.model import checkpoint
from kanoclip.model.config import KAnoCLIPConfig, TrainConfig
from kanoclip.model.kanoclip import KAnoCLIP
from kanoclip.model.losses import total_loss

STATE = "training_state.pt"
LOG = "log.jsonl"


class AuxiliarySet(Dataset[dict[str, Any]]):
    """Images, masks (all-zero for normal images) and labels at the run resolution; no augmentation (SPEC §4)."""

    def __init__(self, samples: list[Sample], size: int) -> None:
        self.samples, self.size = samples, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        rgb, mask = sample_image(s), sample_mask(s, self.size)
        return {
            "index": i,
            "pixels": to_tensor(rgb, self.size),
            "mask": torch.from_numpy(mask.copy()).float(),
            "label": s.label,
            "has_mask": s.mask is not None or s.label == 0,
        }


class _TrainStep(nn.Module):
    """forward() = the model's training forward, so DistributedDataParallel sees (and syncs) it."""

    def __init__(self, model: KAnoCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model.forward_train(pixels)
        return out.text, out.image_logits, out.level_probs


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled sample order of one epoch: a function of (seed, epoch) only."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def image_knowledge_rows(
    model: KAnoCLIP, root: Path, samples: list[Sample], knowledge: dict[str, ImageKnowledge] | None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Embeddings of the VQA sentences (K, D) and, per sample, its row (-1: none). Images match by their path below
    the dataset root; an entry whose sha256 differs from the file describes another image and is not used. Says
    how many matched."""
    rows = torch.full((len(samples),), -1, dtype=torch.long)
    if not knowledge:
        return None, rows
    sentences: list[str] = []
    changed = 0
    for i, s in enumerate(samples):
        entry = knowledge.get(image_key(root, s.image))
        if entry is None:
            continue
        if entry.sha256 is not None and hashlib.sha256(s.image.read_bytes()).hexdigest() != entry.sha256:
            changed += 1
            continue
        rows[i] = len(sentences)
        sentences.append(entry.text)
    print(
        f"image knowledge: {len(sentences)} of {len(samples)} images matched"
        + (f"; {changed} skipped: the file's sha256 differs from the one described" if changed else "")
    )
    if not sentences:
        raise KnowledgeError(
            f"the image-knowledge file describes none of the {len(samples)} images below {root} (keys are paths "
            "below the dataset root, as `kanoclip knowledge images` writes them)"
        )
    return encode_sentences(model, sentences), rows


def train(
    config: KAnoCLIPConfig,
    train_config: TrainConfig,
    data: DatasetIndex,
    out_dir: str | Path,
    knowledge: KnowledgeBase | None = None,
    image_knowledge: dict[str, ImageKnowledge] | None = None,
    device: str = "auto",
    validate: Validate | None = None,
    progress: Callable[[int, int], None] = lambda step, total: None,
) -> Path:
    """Train the learnable parts on `data.test`; returns the final checkpoint folder `out_dir/final`. `progress(step,
    total)` is told of each step taken (the station's adapt job shows it).

    With `validate` (a score of the model in eval mode, higher is better), each saved state is validated first: the
    best step's checkpoint is kept in `out_dir/best` (its step and score in `best.json`) and becomes `final`."""
    train_config.validate()
    if config.kd_use_vqa and not image_knowledge:
        raise KnowledgeError(
            "kd_use_vqa is on but no per-image (VQA) knowledge was given: pass --image-knowledge FILE (written by "
            "`kanoclip knowledge images DATASET`), or train on general knowledge only with --general-knowledge-only"
        )
    out = Path(out_dir)
    ddp = init_distributed(device)
    run_device = resolve_device(device)
    if ddp.world > 1 and run_device.type == "cuda":
        run_device = torch.device("cuda", ddp.local_rank)
    if train_config.batch_size % ddp.world:
        raise ConfigError(f"batch_size {train_config.batch_size} must divide evenly over {ddp.world} processes")
    _seed_everything(train_config.seed)
    model = KAnoCLIP(config).to(run_device)
    model.train()
    targets = knowledge_targets(model, knowledge or KnowledgeBase.load())
    vqa, vqa_rows = image_knowledge_rows(model, data.root, data.test, image_knowledge if config.kd_use_vqa else None)
    labels_all = torch.tensor([s.label for s in data.test])

    groups = [
        {"params": list(model.prompts.parameters()), "lr": train_config.lr_prompts},
        {"params": [*model.bi_cmci.parameters(), *model.adapter.parameters()], "lr": train_config.lr_modules},
    ]
    optimizer = torch.optim.Adam(groups, betas=tuple(train_config.betas))  # type: ignore[arg-type]
    dtype = autocast_dtype(run_device, train_config.precision)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    step_module: nn.Module = _TrainStep(model)
    if ddp.world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[run_device.index] if run_device.type == "cuda" else None
        )

    dataset = AuxiliarySet(data.test, model.config.image_size)
    steps_per_epoch = math.ceil(len(dataset) / train_config.batch_size)
    total_steps = steps_per_epoch * train_config.epochs
    if train_config.max_steps is not None:
        total_steps = min(total_steps, train_config.max_steps)
    run_info = {"model": model.config.to_dict(), "train": train_config.to_dict(), "data": str(data.root)}
    step = _resume(out, run_info, model, optimizer, scaler)
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_log(out / LOG, step)

    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not ddp.main)
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        order = epoch_order(len(dataset), train_config.seed, epoch)
        batches = [order[i : i + train_config.batch_size] for i in range(0, len(order), train_config.batch_size)]
        batches = batches[offset : offset + (total_steps - step)]
        # each process takes every world-th image of a batch; a last batch smaller than the world is skipped by all
        mine = [b[ddp.rank :: ddp.world] for b in batches if len(b) >= ddp.world]
        loader = DataLoader(
            dataset,
            batch_sampler=mine,
            num_workers=train_config.num_workers,
            pin_memory=run_device.type == "cuda",
            worker_init_fn=die_with_parent,
        )
        for batch in loader:
            terms = _step(
                step_module, model, optimizer, scaler, batch, run_device, dtype, targets, vqa, vqa_rows, labels_all
            )
            step += 1
            bar.update()
            progress(step, total_steps)
            bar.set_postfix({k: f"{v:.4f}" for k, v in terms.items()}, epoch=epoch + 1)
            if ddp.main:
                with (out / LOG).open("a") as f:
                    f.write(json.dumps({"step": step, "epoch": epoch + 1, **terms}) + "\n")
                if step % train_config.checkpoint_every == 0 or step % steps_per_epoch == 0 or step == total_steps:
                    if validate is not None:
                        _keep_best(out, model, validate, step, {**run_info, "steps": step})
                    _save_state(out, run_info, model, optimizer, scaler, step)
    bar.close()
    final = out / "final"
    if ddp.main:
        best = _best(out) if validate is not None else None
        if best is not None:
            model.load_learnable_state_dict(load_file(str(out / "best" / checkpoint.WEIGHTS)))
        checkpoint.save(model, final, {"training": {**run_info, "steps": step, **({"best": best} if best else {})}})
    if ddp.world > 1:
        dist.barrier()
    return final


def _step(
    step_module: nn.Module,
    model: KAnoCLIP,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype | None,
    targets: Any,
    vqa: torch.Tensor | None,
    vqa_rows: torch.Tensor,
    labels_all: torch.Tensor,
) -> dict[str, float]:
    pixels = batch["pixels"].to(device, non_blocking=True)
    masks = batch["mask"].to(device)
    labels = batch["label"].to(device)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        text, image_logits, level_probs = step_module(pixels)
    if level_probs.shape[-1] != masks.shape[-1]:
        masks = F.interpolate(masks[:, None], size=level_probs.shape[-2:], mode="nearest")[:, 0]
    rows = vqa_rows[batch["index"]]
    known = rows >= 0
    image_knowledge = vqa[rows[known]].to(device) if vqa is not None and known.any() else None
    knowledge_labels = labels_all[batch["index"]][known].to(device) if image_knowledge is not None else None
    terms = total_loss(
        model.config,
        text,
        image_logits,
        level_probs,
        labels,
        masks,
        targets.to(device),
        image_knowledge,
        knowledge_labels,
        batch["has_mask"].to(device),
    )
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms["total"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return {k: float(v.detach()) for k, v in terms.items()}


# A validation: the model (in eval mode while it runs) -> a score, higher is better
Validate = Callable[[KAnoCLIP], float]
BEST = "best.json"


def _best(out: Path) -> dict[str, Any] | None:
    path = out / BEST
    return dict(json.loads(path.read_text())) if path.is_file() else None


def _keep_best(out: Path, model: KAnoCLIP, validate: Validate, step: int, info: dict[str, Any]) -> None:
    """Validate this step; when it beats the best so far, its checkpoint goes to `out/best`, then `best.json` names
    it (written last: a kill in between leaves the earlier best named). Validation draws no random number, so a
    resumed run validates exactly as an uninterrupted one."""
    model.eval()
    try:
        with torch.no_grad():
            score = float(validate(model))
    finally:
        model.train()
    with (out / LOG).open("a") as f:
        f.write(json.dumps({"step": step, "validation": score}) + "\n")
    best = _best(out)
    if best is None or score > best["score"]:
        checkpoint.save(model, out / "best", {"training": info})
        atomic_write_bytes(out / BEST, json.dumps({"step": step, "score": score}).encode())


def _save_state(
    out: Path,
    run_info: dict[str, Any],
    model: KAnoCLIP,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    step: int,
) -> None:
    state = {
        "run": run_info,
        "step": step,
        "weights": {k: v.detach().cpu() for k, v in model.learnable_state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(out / STATE, buffer.getvalue())


def _resume(
    out: Path,
    run_info: dict[str, Any],
    model: KAnoCLIP,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> int:
    """The step to continue from: 0 for a new run, else the saved state's (which must be of the same run)."""
    path = out / STATE
    if not path.is_file():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values: no code runs
    except Exception as e:  # a damaged or planted state file: say so rather than silently start over
        raise ConfigError(
            f"{path} cannot be read as a kanoclip training state ({e}); delete it to start this run over"
        ) from e
    if state["run"] != run_info:
        changed = sorted(
            f"{section}.{k}"
            for section in ("model", "train")
            for k in run_info[section]
            if state["run"].get(section, {}).get(k) != run_info[section][k]
        ) or ["data"]
        raise ConfigError(
            f"{out} holds a run with other settings ({', '.join(changed[:6])}); use another --out, or delete {path}"
        )
    model.load_learnable_state_dict({k: v.to(model.mean.device) for k, v in state["weights"].items()})
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    numpy_rng = state["rng"]["numpy"]
    np.random.set_state(
        (numpy_rng["name"], numpy_rng["keys"].numpy().astype(np.uint32), *numpy_rng["rest"][:2], numpy_rng["gauss"])
    )
    random.setstate(state["rng"]["python"])
    return int(state["step"])


def _numpy_rng_state() -> dict[str, Any]:
    """NumPy's global RNG state as tensors and plain values, so that the state file loads with weights_only."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "name": name,
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "rest": [int(pos), int(has_gauss)],
        "gauss": float(gauss),
    }


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines of steps after the state being resumed (they are about to be taken again)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if _log_step(line) <= step]
    atomic_write_bytes(path, ("\n".join(kept) + "\n" if kept else "").encode())


def _log_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return 1 << 62  # a line cut short by a crash
