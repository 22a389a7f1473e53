"""kanoclip checkpoints: the learnable weights only (safetensors) and the full JSON config beside them.

A checkpoint is a folder `model.safetensors` + `config.json`; CLIP itself is never copied into it. Writes go through a
temporary file and a rename, so a crash never leaves a half-written checkpoint. Wherever a checkpoint is read it may
also be named `hf://ORG/NAME[@REV]`: `locate` is the one place that turns such a name into a folder (the revision's
snapshot in huggingface_hub's cache, `hub.download`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from kanoclip._files import atomic_write_bytes, atomic_write_json, read_json_object
from kanoclip.errors import CheckpointError
from kanoclip.model import hub
from kanoclip.model.config import KAnoCLIPConfig
from kanoclip.model.kanoclip import KAnoCLIP

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FILES = (WEIGHTS, CONFIG)  # the whole checkpoint: what the Hub holds of one and all `hf://` fetches


@dataclass(frozen=True)
class Located:
    """Where a checkpoint's files are: `folder`, the name it was given by, and for `hf://` names the repository,
    revision and the commit it resolved to (what run.json records)."""

    folder: Path
    name: str
    hub: dict[str, str] | None = None


def locate(where: str | Path) -> Located:
    """A checkpoint folder, or `hf://ORG/NAME[@REV]` fetched into (or, offline, found in) huggingface_hub's cache."""
    if not hub.is_hub_name(where):
        return Located(_checkpoint_dir(where), str(Path(where)))
    snapshot = hub.download(hub.parse(str(where)), FILES)
    source = {"repo_id": snapshot.name.repo_id, "revision": snapshot.name.revision or "main", "commit": snapshot.commit}
    return Located(snapshot.folder, str(where), source)


def save(model: KAnoCLIP, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save the learnable weights and the config (plus `extra` JSON sections such as a calibration)."""
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.learnable_state_dict().items()}
    weights = safetensors_bytes(state)
    atomic_write_bytes(directory / WEIGHTS, weights)
    backbone = {"source": model.backbone_source, "fingerprint": model.backbone_fingerprint}
    document = {
        "model": model.config.to_dict(),
        "backbone": backbone,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),  # checked on load: a damaged or edited file is refused
        **(extra or {}),
    }
    atomic_write_json(directory / CONFIG, document, indent=2)
    return directory


def read_document(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's JSON document: {"model": config, ...extra sections}."""
    path = locate(directory).folder / CONFIG
    document = read_json_object(
        path, CheckpointError, f"a checkpoint is a folder with {WEIGHTS} and {CONFIG}", "the checkpoint is damaged"
    )
    if "model" not in document:
        raise CheckpointError(f"{path} has no 'model' section; is this a kanoclip checkpoint?")
    return document


def update_document(directory: str | Path, section: str, value: Any) -> None:
    """Replace one extra section (e.g. "calibration") of a checkpoint's JSON, atomically. A model from the Hub is
    never edited in the cache (its files are shared by every run that names it)."""
    folder = locate(directory).folder
    if hub.in_cache(folder):
        raise CheckpointError(
            f"{directory} is a Hub model in the Hugging Face cache ({folder}), which kanoclip never edits: write the "
            f"{section} to a file of its own (e.g. `kanoclip calibrate ... --out calibration.json`, then "
            "--calibration calibration.json), or copy the folder and use the copy"
        )
    document = read_document(folder)
    document[section] = value
    atomic_write_json(folder / CONFIG, document, indent=2)


def load(directory: str | Path, **overrides: Any) -> KAnoCLIP:
    """Rebuild a model from a checkpoint, in eval mode. `overrides` change config fields, e.g.
    `pretrained="/path/to/ViT.pt"` when the CLIP weights live elsewhere on this machine. A backbone whose weights
    or activation differ from the ones the checkpoint was trained on is refused: its learned prompts and modules
    would silently no longer fit. `directory` may be `hf://ORG/NAME[@REV]` (`locate`)."""
    directory = locate(directory).folder
    document = read_document(directory)
    if not isinstance(document["model"], dict):
        raise CheckpointError(f"{directory / CONFIG}: its 'model' section is not an object; the checkpoint is damaged")
    trained = KAnoCLIPConfig.from_dict(document["model"])
    config = trained.replace(**overrides) if overrides else trained
    if trained.quick_gelu is not None and config.quick_gelu is not None and config.quick_gelu != trained.quick_gelu:
        raise CheckpointError(
            f"{directory} was trained with quick_gelu={trained.quick_gelu}, asked to run with "
            f"quick_gelu={config.quick_gelu}: the activation must stay as trained"
        )
    model = KAnoCLIP(config)
    expected = document.get("backbone", {}).get("fingerprint")
    if expected is not None and model.backbone_fingerprint is not None and expected != model.backbone_fingerprint:
        raise CheckpointError(
            f"{directory} was trained on the backbone {document['backbone'].get('source')} (fingerprint {expected}), "
            f"but this run builds {model.backbone_source} (fingerprint {model.backbone_fingerprint}): other weights "
            "or another activation. Point --pretrained at the weights it was trained on"
        )
    _check_weights(directory, document)
    try:
        state = load_file(str(directory / WEIGHTS))
    except SafetensorError as e:
        raise CheckpointError(f"{directory / WEIGHTS} is damaged: {e}") from e
    try:
        model.load_learnable_state_dict(state)
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{directory} does not fit its own config: {e}") from e
    return model.eval()


def verify(directory: str | Path) -> dict[str, Any]:
    """The document of a checkpoint whose weights are the bytes its config recorded, without building the model
    (`kanoclip pull`, `kanoclip push`)."""
    folder = locate(directory).folder
    document = read_document(folder)
    _check_weights(folder, document)
    return document


def _check_weights(folder: Path, document: dict[str, Any]) -> None:
    if not (folder / WEIGHTS).is_file():
        raise CheckpointError(f"{folder / WEIGHTS} is missing")
    recorded = document.get("weights_sha256")
    if recorded is not None and weights_sha256(folder) != recorded:
        raise CheckpointError(
            f"{folder / WEIGHTS} does not match the sha256 its {CONFIG} recorded (damaged or edited); train again "
            "or restore the file"
        )


def weights_sha256(directory: str | Path) -> str:
    return hashlib.sha256((locate(directory).folder / WEIGHTS).read_bytes()).hexdigest()


def _checkpoint_dir(directory: str | Path) -> Path:
    path = Path(directory).expanduser()
    if path.is_file() and path.name in (WEIGHTS, CONFIG):
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a folder with {WEIGHTS} and {CONFIG})")
    return path
