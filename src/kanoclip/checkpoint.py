"""kanoclip checkpoints: the learnable weights only (safetensors) and the full JSON config beside them.

A checkpoint is a folder `model.safetensors` + `config.json`; CLIP itself is never copied into it. Writes go through a
temporary file and a rename, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._files import atomic_write_json
from .config import KAnoCLIPConfig
from .errors import CheckpointError
from .model import KAnoCLIP

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save(model: KAnoCLIP, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save the learnable weights and the config (plus `extra` JSON sections such as a calibration)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.learnable_state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{WEIGHTS}.")
    os.close(fd)
    try:
        save_file(state, tmp)
        os.replace(tmp, directory / WEIGHTS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    document = {"model": model.config.to_dict(), **(extra or {})}
    atomic_write_json(directory / CONFIG, document, indent=2)
    return directory


def read_document(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's JSON document: {"model": config, ...extra sections}."""
    path = _checkpoint_dir(directory) / CONFIG
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} is missing: a checkpoint is a folder with {WEIGHTS} and {CONFIG}") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is damaged") from e
    if "model" not in document:
        raise CheckpointError(f"{path} has no 'model' section; is this a kanoclip checkpoint?")
    return document


def update_document(directory: str | Path, section: str, value: Any) -> None:
    """Replace one extra section (e.g. "calibration") of a checkpoint's JSON, atomically."""
    document = read_document(directory)
    document[section] = value
    atomic_write_json(_checkpoint_dir(directory) / CONFIG, document, indent=2)


def load(directory: str | Path, **overrides: Any) -> KAnoCLIP:
    """Rebuild a model from a checkpoint. `overrides` change config fields, e.g. `pretrained="/path/to/ViT.pt"`
    when the CLIP weights live elsewhere on this machine."""
    directory = _checkpoint_dir(directory)
    config = KAnoCLIPConfig.from_dict(read_document(directory)["model"])
    if overrides:
        config = config.replace(**overrides)
    model = KAnoCLIP(config)
    try:
        state = load_file(str(directory / WEIGHTS))
    except FileNotFoundError as e:
        raise CheckpointError(f"{directory / WEIGHTS} is missing") from e
    except SafetensorError as e:
        raise CheckpointError(f"{directory / WEIGHTS} is damaged: {e}") from e
    try:
        model.load_learnable_state_dict(state)
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{directory} does not fit its own config: {e}") from e
    return model


def weights_sha256(directory: str | Path) -> str:
    return hashlib.sha256((_checkpoint_dir(directory) / WEIGHTS).read_bytes()).hexdigest()


def _checkpoint_dir(directory: str | Path) -> Path:
    path = Path(directory).expanduser()
    if path.is_file() and path.name in (WEIGHTS, CONFIG):
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a folder with {WEIGHTS} and {CONFIG})")
    return path
