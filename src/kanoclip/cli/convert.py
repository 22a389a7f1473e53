"""`kanoclip convert`: another method's trained weights as a kanoclip checkpoint (AnomalyCLIP's prompts, #33)."""

from __future__ import annotations

from dataclasses import dataclass

from kanoclip.cli.common import MODEL_ONLY, model_config, run_section
from kanoclip.cli.flags import Command, Parsed, Section
from kanoclip.errors import ConfigError
from kanoclip.model.config import KAnoCLIPConfig
from kanoclip.options import option

BACKBONE_FIELDS = ("backbone", "pretrained", "quick_gelu", "random_seed")  # all a conversion may change


@dataclass(frozen=True, kw_only=True)
class AnomalyCLIPOptions:
    file: str = option(
        positional=True, metavar="FILE.pth", help="AnomalyCLIP's saved prompt learner (its train.py's epoch_N.pth)"
    )
    out: str = option(metavar="DIR", help="the kanoclip checkpoint folder to write")
    trained_on: str | None = option(
        None, metavar="DATASET", help="the dataset the prompts were trained on (e.g. VisA), recorded for reproduce"
    )


def convert_anomalyclip(parsed: Parsed) -> int:
    from kanoclip.model.anomalyclip import BACKBONE, convert

    o = parsed.get(AnomalyCLIPOptions)
    other = sorted(set(parsed.values["model"]) - set(BACKBONE_FIELDS))
    if other:
        raise ConfigError(
            f"--set {', '.join(other)} cannot be used here: the converted model runs AnomalyCLIP's settings; only the "
            "backbone it runs on may be chosen (--backbone, --pretrained)"
        )
    config = model_config(parsed)
    print(f"backbone: {config.backbone} ({config.pretrained}); AnomalyCLIP's published prompts need {BACKBONE}")
    out = convert(o.file, o.out, config, trained_on=o.trained_on)
    print(f"checkpoint: {out}  (use it with: kanoclip detect IMAGES --checkpoint {out})")
    return 0


ANOMALYCLIP_EPILOG = """examples:
  kanoclip convert anomalyclip AnomalyCLIP/checkpoints/9_12_4_multiscale/epoch_15.pth --trained-on VisA --out ac-visa
  kanoclip convert anomalyclip epoch_15.pth --pretrained /models/ViT-L-14-336px.pt --out ac    local CLIP weights
  kanoclip detect parts/ --checkpoint ac-visa                                       then use it as any checkpoint

no file at hand: --checkpoint anomalyclip:trained-on-visa (or anomalyclip:trained-on-mvtec) fetches AnomalyCLIP's
published file from GitHub once and converts it into the cache. The file is read with torch.load(weights_only=True):
one holding pickled Python objects is refused. The prompts were learned on OpenAI's CLIP ViT-L/14@336px (open_clip
downloads those weights once, about 1.7 GB, unless --pretrained names a local copy); the model runs AnomalyCLIP's
test settings (518 px, V-V path from layer 6, last-layer patch features, sigma 4), with Bi-CMCI and the Conv-Adapter
set to pass features through unchanged.
"""

CONVERT_MODEL = Section("model", KAnoCLIPConfig, title="model", only=("backbone", "pretrained"), partial=True)

CONVERT = Command(
    "convert",
    "another method's trained weights as a kanoclip checkpoint",
    subcommands=(
        Command(
            "anomalyclip",
            "AnomalyCLIP's learned prompts (epoch_N.pth) as a kanoclip checkpoint",
            convert_anomalyclip,
            (Section("convert", AnomalyCLIPOptions), CONVERT_MODEL, run_section(only=MODEL_ONLY)),
            ANOMALYCLIP_EPILOG,
        ),
    ),
)
