"""`kanoclip adapt`: fit the model to one product from good parts alone, with synthesized defects (#32)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kanoclip.cli.common import MODEL_ONLY, model_config, run_section
from kanoclip.cli.flags import Command, Parsed, Section
from kanoclip.cli.train import TRAIN_MODEL
from kanoclip.model.config import TrainConfig
from kanoclip.options import option


@dataclass(frozen=True, kw_only=True)
class AdaptOptions:
    goods: tuple[str, ...] = option(
        positional=True, metavar="GOOD", help="good images of the product: files, folders or globs"
    )
    out: str = option("runs/adapt", metavar="DIR", help="run folder: the data, resumable state, log, final/")
    class_name: str = option("object", help="the product's name, as the prompts say it")
    synth: str = option(
        "cutpaste,scar,perlin", help="the synthesized defects: cutpaste, scar, perlin (comma-separated)"
    )
    textures: tuple[str, ...] = option(
        (),
        nargs="*",
        metavar="TEXTURE",
        help="images that fill perlin's regions (default: the good parts' own patches)",
    )
    defects: str | None = option(None, metavar="DIR", help="real defect images to add (masks: NAME_mask.png beside)")
    val_fraction: float = option(
        0.2, help="good images held out, with their synthesized defects, to pick the best step"
    )
    device: str = option("auto", help="auto, cpu, cuda (under torchrun: one GPU per process)")


def adapt(parsed: Parsed) -> int:
    from kanoclip.evaluation.adapt import adapt as run_adapt

    o = parsed.get(AdaptOptions)
    config = dataclasses.replace(model_config(parsed), kd_use_vqa=False)  # no per-image knowledge for a new product
    final = run_adapt(
        config,
        parsed.get(TrainConfig),
        o.goods,
        o.out,
        o.class_name,
        [k.strip() for k in o.synth.split(",") if k.strip()],
        o.val_fraction,
        o.textures,
        o.defects,
        o.device,
    )
    print(f"checkpoint: {final}  (use it with: kanoclip detect IMAGES --checkpoint {final})")
    return 0


EPILOG = """examples:
  kanoclip adapt ../shared/data/MVTec_derived_hazelnut_toy/hazelnut/train/good --preset kanoclip-tiny --max-steps 2
  kanoclip adapt /data/line3/good --class-name bracket --out runs/line3            then: --checkpoint runs/line3/final
  kanoclip adapt good/ --defects real_defects/ --synth cutpaste,perlin --textures /data/dtd/*.jpg --out runs/p

re-running the same command continues from the last saved state; each saved state is validated on the held-out good
parts and their synthesized defects, and the best becomes RUN/final.
"""

ADAPT = Command(
    "adapt",
    "fit the model to one product from its good parts (synthesized defects)",
    adapt,
    (
        Section("adapt", AdaptOptions),
        Section("training", TrainConfig, title="training (defaults: the paper's recipe)"),
        TRAIN_MODEL,
        run_section(only=MODEL_ONLY),
    ),
    EPILOG,
)
