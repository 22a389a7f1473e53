"""Named model presets, shipped as data the way open_clip ships its model configs.

Each `model/presets/NAME.json` is a partial `KAnoCLIPConfig`: the fields the preset pins (the rest keep their
defaults) and a one-line "description". Adding a preset is adding a file; nothing here lists them by hand. The open_clip
architecture configs (the tiny test backbone) live apart, in `model/architectures/`.

This module imports no torch until `create_model` builds a model, so listing presets stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kanoclip.errors import ConfigError
from kanoclip.model.config import KAnoCLIPConfig
from kanoclip.model.published import is_published
from kanoclip.model.published import names as published_names

if TYPE_CHECKING:
    from kanoclip.model.kanoclip import KAnoCLIP

FOLDER = Path(__file__).parent / "presets"
DESCRIPTION = "description"  # the one key of a preset file that is not a config field


@cache
def _presets() -> dict[str, dict[str, Any]]:
    """Every preset file read once: name -> its JSON object, checked to hold a one-line description."""
    presets = {}
    for path in sorted(FOLDER.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"preset file {path} is not valid JSON: {e}") from e
        text = data.get(DESCRIPTION) if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip() or "\n" in text:
            raise ConfigError(f'preset file {path} needs a one-line "{DESCRIPTION}"')
        presets[path.stem] = data
    return presets


def list_models() -> list[str]:
    """The names of the shipped presets, sorted."""
    return sorted(_presets())


def _entry(name: str) -> dict[str, Any]:
    presets = _presets()
    if is_published(name):
        raise ConfigError(
            f"{name!r} names trained prompts, not a model config: use it as --checkpoint {name} "
            f"(published: {', '.join(published_names())})"
        )
    if name not in presets:
        close = difflib.get_close_matches(name, presets, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint} (presets: {', '.join(sorted(presets))})")
    return presets[name]


def description(name: str) -> str:
    """The preset's one-line description, for listings."""
    return str(_entry(name)[DESCRIPTION])


def preset(name: str) -> KAnoCLIPConfig:
    """The preset's full config: its fields over `KAnoCLIPConfig`'s defaults, validated."""
    fields = {k: v for k, v in _entry(name).items() if k != DESCRIPTION}
    try:
        return KAnoCLIPConfig.from_dict(fields)
    except ConfigError as e:
        raise ConfigError(f"preset {name!r} ({FOLDER / name}.json): {e}") from e


def create_model(name: str, **overrides: Any) -> KAnoCLIP:
    """Build the preset's model, with any config fields changed by keyword (`image_size=224`, `pretrained=...`).

    The model comes back in eval mode, ready for zero-shot inference; call `.train()` to train it.
    """
    from kanoclip.model.kanoclip import KAnoCLIP

    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(KAnoCLIPConfig)})
    if unknown:
        raise ConfigError(f"create_model({name!r}): unknown KAnoCLIPConfig field(s) {', '.join(unknown)}")
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}  # as JSON would give them
    return KAnoCLIP(preset(name).replace(**changes)).eval()
