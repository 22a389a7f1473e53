"""`kanoclip adapt` (issue #32): pixel and image AUROC on the test split of hazelnut (MVTec-derived) and KolektorSDD
(AdaCLIP's thirds, SPEC I19) in four settings: zero-shot (training-free), 4 references (a few-shot bank of 4 good
training images), adapted (`kanoclip adapt` on the good training images, evaluated with RUN/final) and adapted + 4
references; with adapt's seconds per training step and the step of its best validation (best.json).

The commands are the CLI's, run in this process as a user types them (`kanoclip adapt`, `kanoclip evaluate
--checkpoint RUN/final --reference ...`); the training step is timed by wrapping the loop's step function.

The default model is `kanoclip-tiny` with random weights (no pretrained CLIP can be downloaded here): its numbers
measure the pipeline, not the method. `--preset kanoclip-vit-l-14-336` (or any preset) runs a real backbone.

    python -m benchmarks.adapt [--quick] [--no-append] [--preset NAME] [--max-steps N] [--keep DIR]

--quick: `--max-steps 40 --checkpoint-every 10`; without it adapt runs the paper's recipe (15 epochs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

import kanoclip.evaluation.adapt as adapt_module
from benchmarks.common import append_results, machine_description
from kanoclip.cli import main as kanoclip
from kanoclip.data.datasets import load_dataset
from kanoclip.data.datasets.base import sample_image
from kanoclip.training import loop

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHOTS = 4
SETTINGS = ("zero-shot", f"{SHOTS} references", "adapted", f"adapted + {SHOTS} references")


@dataclass
class Dataset:
    name: str
    root: Path
    layout: str | None
    goods_note: str  # where the good training images come from


DATASETS = (
    Dataset("hazelnut (MVTec-derived)", DATA / "MVTec_derived_hazelnut_toy", None, "its train/good"),
    Dataset(
        "KolektorSDD, thirds (SPEC I19)",
        DATA / "KolektorSDD",
        "kolektor-thirds",
        "the normal thirds of the split's train part, written out as PNG crops",
    ),
)


@contextlib.contextmanager
def wrapped(module: ModuleType, name: str) -> Iterator[list[tuple[float, float]]]:
    """`module.name` timed while the block runs: (start, end) of each call, perf_counter seconds. The training step
    ends by reading its losses as floats, so on a GPU its queue is drained inside the timing."""
    original: Callable[..., Any] = getattr(module, name)
    times: list[tuple[float, float]] = []

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            times.append((start, time.perf_counter()))

    setattr(module, name, timed)
    try:
        yield times
    finally:
        setattr(module, name, original)


def cli(args: list[str], log: Path) -> float:
    """Seconds of one `kanoclip ...` command; its printed output goes to `log` (shown when the command fails)."""
    buffer = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = kanoclip(args)
    seconds = time.perf_counter() - start
    log.write_text(buffer.getvalue())
    if code != 0:
        raise SystemExit(f"kanoclip {' '.join(args)} exited {code}:\n{buffer.getvalue()[-3000:]}")
    return seconds


def good_images(data: Dataset, folder: Path) -> tuple[list[Path], str]:
    """The good training images as files (what `adapt` and `--reference` take) and the class name."""
    index = load_dataset(data.root, data.layout)
    if all(s.crop is None for s in index.train):
        return [s.image for s in index.train], index.classes[0]
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, sample in enumerate(index.train):
        files.append(folder / f"{i:03d}.png")
        Image.fromarray(sample_image(sample)).save(files[-1])
    return files, index.classes[0]


def measure(data: Dataset, work: Path, model: list[str], train: list[str], device: str) -> dict[str, Any]:
    goods, cls = good_images(data, work / "goods")
    picks = np.random.default_rng(0).choice(len(goods), SHOTS, replace=False)  # as benchmarks/fewshot.py draws
    references = [flag for i in sorted(picks) for flag in ("--reference", str(goods[i]))]
    run = work / "run"
    adapt_args = ["adapt", *map(str, goods), "--class-name", cls, "--out", str(run), "--device", device]
    with wrapped(loop, "_step") as steps, wrapped(adapt_module, "prepare") as synthesis:
        adapt_s = cli([*adapt_args, *model, *train], work / "adapt.log")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    data_json = json.loads((run / "data.json").read_text())
    held = len(list((run / "validation" / cls / "test" / "good").iterdir()))
    validations = [(v["step"], v["validation"]) for v in log if "validation" in v]
    saved = {step for step, _ in validations}  # a validation and a saved state after these steps
    starts = [s for s, _ in steps]  # of steps 1, 2, ...: a fresh run
    # after step k (1-based) and before step k + 1: the validation, the best checkpoint when it is one, the state
    between = [starts[k] - steps[k - 1][1] for k in sorted(saved) if k < len(steps)]
    result: dict[str, Any] = {
        "class": cls,
        "goods": len(goods),
        "held": held,
        "train_images": len(load_dataset(run / "data", "mvtec").test),
        "data": data_json,
        "train": json.loads((run / "final" / "config.json").read_text())["training"]["train"],
        "steps": len(steps),
        "step_s": statistics.median(e - s for s, e in steps),
        "step_to_step_s": statistics.median(
            b - a for step, (a, b) in enumerate(itertools.pairwise(starts), 1) if step not in saved
        ),
        "validation_s": statistics.median(between) if between else None,
        "adapt_s": adapt_s,
        "synthesis_s": sum(e - s for s, e in synthesis),
        "validations": validations,
        "best": json.loads((run / "best.json").read_text()),
        "settings": {},
    }
    where = [str(data.root), *(["--layout", data.layout] if data.layout else []), "--device", device]
    checkpoint = ["--checkpoint", str(run / "final")]
    for setting, flags in zip(
        SETTINGS, (model, [*model, *references], checkpoint, [*checkpoint, *references]), strict=True
    ):
        out = work / setting.replace(" ", "_").replace("+", "and")
        cli(["evaluate", *where, *flags, "--out", str(out)], out.with_suffix(".log"))
        results = json.loads((out / "results.json").read_text())
        [row] = results["classes"]
        metrics = row["metrics"]
        result["settings"][setting] = {
            "pixel": metrics["pixel_auroc"],
            "image": metrics["image_auroc"],
            "images": row["images"],
            "anomalous": row["anomalous"],
            "random_weights": results["info"]["random_weights"],
        }
        print(f"{data.name}: {setting}: {result['settings'][setting]}", flush=True)
    return result


def section(
    results: dict[str, dict[str, Any]],
    model: list[str],
    train: list[str],
    device: str,
    command: str,
    wall: float,
    load: tuple[float, float],
) -> str:
    random = any(s["random_weights"] for r in results.values() for s in r["settings"].values())
    lines = []
    if random:
        lines += [
            f"**RANDOM CLIP weights (`{' '.join(model)}`; no pretrained CLIP can be downloaded here): these numbers "
            "measure the pipeline, not the method.** They say that adapt runs end to end on real data and writes a "
            "checkpoint that `evaluate` (with and without `--reference`) loads; they say nothing about how well "
            "adapting works.",
            "",
        ]
    first = next(iter(results.values()))
    data, recipe = first["data"], first["train"]
    lines += [
        f"`{command}`: {wall / 60:.1f} min in all. Per dataset, these commands, run in this process as typed:",
        "",
        "```",
        f"kanoclip adapt GOOD... --class-name CLASS --out RUN --device {device} {' '.join(model)} {' '.join(train)}",
        f"kanoclip evaluate DATA [--layout kolektor-thirds] --device {device} {' '.join(model)}",
        f"kanoclip evaluate DATA [--layout kolektor-thirds] --device {device} {' '.join(model)} "
        f"--reference R1 ... --reference R{SHOTS}",
        f"kanoclip evaluate DATA [--layout kolektor-thirds] --device {device} --checkpoint RUN/final",
        f"kanoclip evaluate DATA [--layout kolektor-thirds] --device {device} --checkpoint RUN/final "
        f"--reference R1 ... --reference R{SHOTS}",
        "```",
        "",
        f"GOOD: for hazelnut {DATASETS[0].goods_note}, for KolektorSDD {DATASETS[1].goods_note}. R1..R{SHOTS}: "
        "drawn from those good images with seed 0 (as `benchmarks/fewshot.py`), the same in both settings that use "
        f"them. adapt's other settings are its defaults: synthesized {','.join(data['kinds'])}, "
        f"{data['per_image']} per good image, {data['val_fraction']:.0%} of the goods held out to validate, "
        f"batch {recipe['batch_size']}, {recipe['epochs']} epochs unless --max-steps, a saved and validated state "
        f"every {recipe['checkpoint_every']} steps and at each epoch's end, seed {recipe['seed']}, "
        f"{recipe['precision']}.",
        "",
        "| dataset | test images (defective) | setting | pixel AUROC | image AUROC |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for setting, s in r["settings"].items():
            lines.append(
                f"| {name} | {s['images']} ({s['anomalous']}) | {setting} | {s['pixel']:.3f} | {s['image']:.3f} |"
            )
    lines += [
        "",
        "| dataset | good images (held out) | adapt's training images | steps | training step (s, median) "
        "| step to step (s, median) | validation and saved state (s, median) | best step (best.json) "
        "| its validation | validations at steps | adapt (s) | of which the data (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        steps = ", ".join(str(step) for step, _ in r["validations"])
        validation = "—" if r["validation_s"] is None else f"{r['validation_s']:.2f}"
        lines.append(
            f"| {name} | {r['goods']} ({r['held']}) | {r['train_images']} | {r['steps']} | {r['step_s']:.3f} "
            f"| {r['step_to_step_s']:.3f} | {validation} | {r['best']['step']} | {r['best']['score']:.3f} | {steps} "
            f"| {r['adapt_s']:.1f} | {r['synthesis_s']:.1f} |"
        )
    lines += [
        "",
        f"Training step: forward, losses, backward and Adam, batch {recipe['batch_size']}, {recipe['num_workers']} "
        "loader workers; step to step: from one step's start to the next (data loading included; the intervals with "
        "a validation and a saved state in them are left out). Validation: the mean of image and pixel AUROC on the "
        "held-out goods and their synthesized defects; with the saved state (and the best checkpoint when it is "
        "one), timed between the steps around it. adapt (s): the whole command, model built and RUN/final written. "
        "The data: synthesizing and writing RUN/data and RUN/validation.",
        "",
        f"Load average (1 min) at the start and at the end: {load[0]:.2f}, {load[1]:.2f} (on {os.cpu_count()} "
        "cores; above that, other processes shared the CPU and the times are slower than the machine's).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="--max-steps 40 --checkpoint-every 10")
    parser.add_argument("--no-append", action="store_true", help="print only, do not append to RESULTS.md")
    parser.add_argument("--preset", default="kanoclip-tiny", help="the model (default: kanoclip-tiny, random)")
    parser.add_argument("--max-steps", type=int, default=None, help="adapt's --max-steps (default: quick 40)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs and reports in this new folder")
    args = parser.parse_args()
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: not empty (adapt would resume the run there: no step to time)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = ["--preset", args.preset]
    steps = args.max_steps if args.max_steps is not None else (40 if args.quick else None)
    train = [*(["--max-steps", str(steps)] if steps else []), *(["--checkpoint-every", "10"] if args.quick else [])]
    start, load = time.perf_counter(), os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        work = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        results = {data.name: measure(data, work / data.root.name, model, train, device.type) for data in DATASETS}
    command = " ".join(["python -m benchmarks.adapt", *sys.argv[1:]])
    text = section(results, model, train, device.type, command, time.perf_counter() - start, (load, os.getloadavg()[0]))
    print(text)
    if not args.no_append:
        append_results("kanoclip adapt (#32)", f"{machine_description(device)}\n\n{text}")


if __name__ == "__main__":
    main()
