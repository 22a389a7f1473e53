"""`kanoclip train`: prompts, Bi-CMCI and the Conv-Adapter on an auxiliary dataset (SPEC §4)."""

from __future__ import annotations

from dataclasses import dataclass

from kanoclip.cli.common import MODEL, MODEL_ONLY, model_config, run_section
from kanoclip.cli.flags import Command, Parsed, Section
from kanoclip.model.config import TrainConfig
from kanoclip.options import option


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    dataset: str = option(positional=True, metavar="DIR", help="the auxiliary dataset; its test split is trained on")
    layout: str | None = option(None, help="dataset layout, when detection is ambiguous")
    out: str = option("runs/train", metavar="DIR", help="run folder: resumable state, log.jsonl, final/ checkpoint")
    image_knowledge: str | None = option(
        None, metavar="FILE", help="per-image VQA knowledge (kanoclip knowledge images) for the KD loss"
    )
    knowledge: str | None = option(None, metavar="FILE", help="general knowledge JSON (default: the shipped base)")
    device: str = option("auto", help="auto, cpu, cuda (under torchrun: one GPU per process)")


def train(parsed: Parsed) -> int:
    from kanoclip.data.datasets import load_dataset
    from kanoclip.knowledge import KnowledgeBase, load_image_knowledge
    from kanoclip.training.loop import train

    o = parsed.get(TrainOptions)
    index = load_dataset(o.dataset, o.layout)
    print(index.summary())
    final = train(
        model_config(parsed),
        parsed.get(TrainConfig),
        index,
        o.out,
        KnowledgeBase.load(o.knowledge) if o.knowledge else None,
        load_image_knowledge(o.image_knowledge) if o.image_knowledge else None,
        o.device,
    )
    print(f"checkpoint: {final}  (use it with: kanoclip detect IMAGES --checkpoint {final})")
    return 0


EPILOG = """examples:
  kanoclip train ../shared/data/MVTec_AD --preset kanoclip-tiny --general-knowledge-only --max-steps 2 --out runs/t
  kanoclip train /data/mvtec --image-knowledge mvtec_vqa.json --out runs/mvtec       SPEC §4 recipe, resumable
  kanoclip train /data/mvtec --general-knowledge-only --out runs/mvtec
  torchrun --nproc_per_node 4 -m kanoclip train /data/visa --general-knowledge-only --out runs/visa
  kanoclip train /data/KolektorSDD --backbone ViT-B-16 --image-size 224 --general-knowledge-only

re-running the same command continues from the last saved state (every --checkpoint-every steps and each epoch).
"""

# The model section here also takes --general-knowledge-only (kd_use_vqa): a loss choice, saved with the checkpoint.
TRAIN_MODEL = Section("model", MODEL.cls, title="model", only=(*(MODEL.only or ()), "kd_use_vqa"), partial=True)

TRAIN = Command(
    "train",
    "train prompts, Bi-CMCI and adapter on auxiliary data",
    train,
    (
        Section("train", TrainOptions),
        Section("training", TrainConfig, title="training (defaults: the paper's recipe)"),
        TRAIN_MODEL,
        run_section(only=MODEL_ONLY),
    ),
    EPILOG,
)
