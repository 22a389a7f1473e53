"""`kanoclip info` and `kanoclip models`: what a model config resolves to, and the shipped presets."""

from __future__ import annotations

import json
from dataclasses import dataclass

from kanoclip.cli.common import MODEL, MODEL_ONLY, model_config, run_section
from kanoclip.cli.flags import Command, Parsed, Section


def info(parsed: Parsed) -> int:
    from kanoclip.model.kanoclip import KAnoCLIP

    model = KAnoCLIP(model_config(parsed))
    counts = model.parameter_counts()
    print(f"backbone: {model.backbone_source}")
    print("resolved config:")
    for key, value in model.config.to_dict().items():
        print(f"  {key}: {json.dumps(value)}")
    print("parameters:")
    print(f"  frozen (CLIP):        {counts['frozen']:>13,}")
    print(f"  learnable:            {counts['learnable']:>13,}")
    for part in ("prompts", "bi_cmci", "adapter"):
        print(f"    {part:<19} {counts[part]:>13,}")
    return 0


@dataclass(frozen=True)
class NoOptions:
    """A command without options of its own."""


def models(parsed: Parsed) -> int:
    from kanoclip.model.presets import list_models, preset

    for name in list_models():
        config = preset(name)
        print(f"{name:<28} {config.backbone} ({config.pretrained}) at {config.image_size} px")
    print("use one with --preset NAME (detect, evaluate, serve, ...) or kanoclip.create_model(NAME)")
    return 0


INFO_EPILOG = """examples:
  kanoclip info --preset kanoclip-tiny                       a preset at tiny size, no download
  kanoclip info                                    resolved config and parameter counts of the default model
  kanoclip info --backbone ViT-B-16 --image-size 224
  kanoclip info --pretrained /models/ViT-L-14-336px.pt   an OpenAI .pt file or an open_clip checkpoint
  kanoclip info --set tap_mode=top --set map_sigma=2      any config field, value as JSON

weights: --pretrained takes an open_clip tag (default 'openai', downloaded and cached by open_clip), a local file,
or 'none' for random weights (tests and smoke runs only: the outputs then measure the pipeline, not the method).
"""

MODELS_EPILOG = """examples:
  kanoclip models                                  the presets, with backbone, weights and resolution
"""

INFO = Command(
    "info",
    "print the resolved config and parameter counts",
    info,
    (MODEL, run_section(only=MODEL_ONLY)),
    INFO_EPILOG,
)
MODELS = Command("models", "list the model presets", models, (Section("models", NoOptions),), MODELS_EPILOG)
