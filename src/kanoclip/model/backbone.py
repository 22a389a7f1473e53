"""Frozen CLIP towers from open_clip names and tags, OpenAI `.pt` files or open_clip checkpoints (SPEC §3.1, I1).

The towers are never modified in place beyond one thing: the vision positional embedding is resized once, at load,
to the run resolution, so that open_clip's own forward and ours see the same model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import build_model_from_openai_state_dict
from open_clip.pretrained import download_pretrained, get_pretrained_cfg
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from kanoclip.errors import BackboneError
from kanoclip.model.config import KAnoCLIPConfig

log = logging.getLogger(__name__)

open_clip.add_model_config(Path(__file__).parent / "architectures")  # open_clip model configs (kanoclip-tiny)

_OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
# TorchScript runs code embedded in the file when loaded: only OpenAI's own releases are loaded that way, known by the
# sha256 in their download URLs; anything else needs the user's word (--trust-torchscript sets this variable).
TRUST_TORCHSCRIPT = "KANOCLIP_TRUST_TORCHSCRIPT"


@dataclass
class Backbone:
    """A frozen CLIP model with what the rest of the pipeline needs to know about it."""

    clip: nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # human-readable origin of the weights
    fingerprint: str | None  # the weights' content and activation; None for in-memory models (not checked)
    quick_gelu: bool | None = None  # the activation the towers were built with (None: in-memory, as given)

    @property
    def visual(self) -> VisionTransformer:
        return self.clip.visual


def load_backbone(config: KAnoCLIPConfig) -> Backbone:
    """Build the CLIP model that `config.backbone` / `config.pretrained` name, frozen, at `config.image_size`.

    The activation is resolved from where the weights come from (SPEC §3.1): OpenAI's weights were trained with
    QuickGELU, and building them with nn.GELU silently shifts every output. `config.quick_gelu` overrides.
    """
    name = _model_name(config.backbone)
    pretrained = config.pretrained
    if pretrained.lower() == "none":
        warnings.warn(
            f"building {name} with RANDOM weights (pretrained='none'): outputs test the pipeline, not the method",
            stacklevel=2,
        )
        quick_gelu = _resolve_quick_gelu(config, name, None)
        with torch.random.fork_rng():
            torch.manual_seed(config.random_seed)
            clip = _create(name, None, quick_gelu)
        source = f"{name} (random weights, seed {config.random_seed})"
    elif Path(pretrained).expanduser().is_file():
        path = Path(pretrained).expanduser().resolve()
        quick_gelu = _resolve_quick_gelu(config, name, path)
        clip = _load_file(name, path, quick_gelu)
        source = f"{name} from {path}"
    else:
        tag_cfg = get_pretrained_cfg(name, pretrained)
        if not tag_cfg:
            known = open_clip.list_pretrained_tags_by_model(name)
            raise BackboneError(
                f"pretrained={pretrained!r} is neither a file nor a known tag of {name} (known tags: {known}); "
                "pass an open_clip tag, the path of a local checkpoint, or 'none' for random weights"
            )
        path = _fetch_pretrained(name, pretrained, tag_cfg)
        tag_gelu = bool(tag_cfg.get("quick_gelu", False))
        quick_gelu = tag_gelu if config.quick_gelu is None else config.quick_gelu
        clip = _load_file(name, path, quick_gelu)
        source = f"{name} / {pretrained} ({path})"
    clip = clip.float().eval().requires_grad_(False)
    _check_supported(clip, name)
    fingerprint = weights_fingerprint(clip, name, quick_gelu)
    set_input_resolution(clip.visual, config.image_size, config.pos_embed_interpolation)
    preprocess = getattr(clip.visual, "preprocess_cfg", {})
    mean = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))
    return Backbone(clip, open_clip.get_tokenizer(name), mean, std, source, fingerprint, quick_gelu)


def weights_fingerprint(clip: nn.Module, name: str, quick_gelu: bool) -> str:
    """What identifies a backbone whatever file format or path it came from: the architecture, the activation and
    a hash of weights that differ between every pair of trainings (projections, patch embedding, positions), taken
    before the positional embedding is resized. fp16 weights widened to fp32 hash like the fp32 originals."""
    digest = hashlib.sha256(name.encode())
    visual: Any = clip.visual
    text_projection: Any = getattr(getattr(clip, "text", clip), "text_projection", None)
    if isinstance(text_projection, nn.Linear):
        text_projection = text_projection.weight
    for tensor in (visual.proj, visual.conv1.weight, visual.positional_embedding, text_projection):
        if tensor is not None:
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return f"{name}|{'quick_gelu' if quick_gelu else 'gelu'}|{digest.hexdigest()[:16]}"


def _resolve_quick_gelu(config: KAnoCLIPConfig, name: str, path: Path | None) -> bool:
    """The activation of a model built from a file (or at random): the config's explicit choice; else what the file
    says of its origin (OpenAI's formats, an open_clip_config.json beside it, 'openai' in its path); else QuickGELU
    when every published weight of this architecture is QuickGELU; else the architecture's own config."""
    if config.quick_gelu is not None:
        return config.quick_gelu
    if path is not None:
        if _is_torchscript(path) or (path.suffix != ".safetensors" and _is_openai_state_dict(_torch_load(path))):
            return True
        beside = path.parent / "open_clip_config.json"
        if beside.is_file():
            try:
                model_cfg = json.loads(beside.read_text()).get("model_cfg", {})
            except (OSError, json.JSONDecodeError):
                model_cfg = {}
            if "quick_gelu" in model_cfg:
                return bool(model_cfg["quick_gelu"])
        if "openai" in str(path).lower():
            return True
        tags = open_clip.list_pretrained_tags_by_model(name)
        if tags and all(get_pretrained_cfg(name, t).get("quick_gelu", False) for t in tags):
            return True
        if "openai" in tags:
            log.warning(
                "%s: cannot tell whether these are OpenAI's weights (QuickGELU) or another training (GELU); building "
                "with the architecture's default. If they are OpenAI's, pass --set quick_gelu=true",
                path,
            )
    return bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))


def from_model(clip: nn.Module, config: KAnoCLIPConfig, tokenizer_name: str = "ViT-B-16") -> Backbone:
    """Wrap an open_clip model already in memory (tests, notebooks); it is frozen and resized like a loaded one."""
    clip = clip.float().eval().requires_grad_(False)
    _check_supported(clip, "the given model")
    set_input_resolution(clip.visual, config.image_size, config.pos_embed_interpolation)
    return Backbone(
        clip,
        open_clip.get_tokenizer(tokenizer_name),
        open_clip.OPENAI_DATASET_MEAN,
        open_clip.OPENAI_DATASET_STD,
        "in-memory model",
        None,
    )


def resize_positional_embedding(pos: torch.Tensor, new_grid: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a (1 + h*w, C) ViT positional embedding to a new square-or-not grid, keeping the CLS position.

    Bilinear without antialiasing, `align_corners=False`, as AnomalyCLIP does (SPEC §3.1).
    """
    cls_pos, grid_pos = pos[:1], pos[1:]
    old = round(grid_pos.shape[0] ** 0.5)
    if old * old != grid_pos.shape[0]:
        raise BackboneError(f"positional embedding of {grid_pos.shape[0]} patches is not a square grid")
    grid = grid_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    align = None if mode == "nearest" else False
    grid = F.interpolate(grid.float(), size=new_grid, mode=mode, align_corners=align)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([cls_pos, grid], dim=0)


def set_input_resolution(visual: VisionTransformer, image_size: int, mode: str = "bilinear") -> None:
    """Make the vision tower run at `image_size` by resizing its positional embedding once."""
    patch = visual.patch_size[0]
    if image_size % patch:
        raise BackboneError(f"image_size={image_size} must be a multiple of the patch size {patch}")
    grid = (image_size // patch, image_size // patch)
    resized = resize_positional_embedding(visual.positional_embedding.data, grid, mode)
    visual.positional_embedding = nn.Parameter(resized, requires_grad=False)
    visual.image_size = (image_size, image_size)
    visual.grid_size = grid


def _model_name(backbone: str) -> str:
    """An open_clip model name; a path to an open_clip JSON model config registers it under its file stem."""
    path = Path(backbone).expanduser()
    if backbone.endswith(".json"):
        if not path.is_file():
            raise BackboneError(f"backbone config file {path} does not exist")
        open_clip.add_model_config(path)
        return path.stem
    if backbone.startswith(("hf-hub:", "local-dir:")) or backbone.replace("/", "-") in open_clip.list_models():
        return backbone
    raise BackboneError(
        f"unknown backbone {backbone!r}: use an open_clip model name (e.g. ViT-L-14-336, ViT-B-16), "
        "a path to an open_clip model config .json, or hf-hub:/local-dir: names"
    )


def _create(name: str, checkpoint: Path | None, quick_gelu: bool) -> nn.Module:
    try:
        return open_clip.create_model(name, pretrained=str(checkpoint) if checkpoint else None, quick_gelu=quick_gelu)
    except (RuntimeError, KeyError, ValueError, AssertionError) as e:
        first = str(e).strip().splitlines()[0][:400]
        raise BackboneError(
            f"could not load {checkpoint} as an open_clip {name} checkpoint: {first}. If the file is another "
            "architecture, pass its open_clip name with --backbone"
        ) from e


def _load_file(name: str, path: Path, quick_gelu: bool) -> nn.Module:
    """Load a local checkpoint: OpenAI TorchScript or state_dict, or an open_clip (training) checkpoint."""
    if _is_torchscript(path):
        _check_torchscript(path)
        with warnings.catch_warnings():  # TorchScript is deprecated in torch, but it is OpenAI's release format
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        return _from_openai_state_dict(dict(state), quick_gelu)
    if path.suffix != ".safetensors":
        state = _torch_load(path)
        if _is_openai_state_dict(state):
            return _from_openai_state_dict(dict(state), quick_gelu)
    return _create(name, path, quick_gelu)


def openai_sha256s() -> set[str]:
    """The sha256 of every OpenAI CLIP release, from the download URLs in open_clip's pretrained table."""
    found = set()
    for name, tag in open_clip.list_pretrained():
        if tag == "openai":
            match = re.search(r"/clip/models/([0-9a-f]{64})/", get_pretrained_cfg(name, tag).get("url", ""))
            if match:
                found.add(match.group(1))
    return found


def _check_torchscript(path: Path) -> None:
    if os.environ.get(TRUST_TORCHSCRIPT) == "1":
        return
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    if digest.hexdigest() not in openai_sha256s():
        raise BackboneError(
            f"{path} is a TorchScript file that is not one of OpenAI's releases (sha256 {digest.hexdigest()[:16]}...): "
            "loading it would run the code inside it. Convert it to a state dict or .safetensors, or, if you trust "
            "where it came from, pass --trust-torchscript"
        )


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise BackboneError(
            f"{path} is not a weights file (expected an OpenAI .pt, a PyTorch state dict, an open_clip checkpoint or "
            f".safetensors; torch says: {first})"
        ) from e


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def _is_openai_state_dict(state: Any) -> bool:
    """OpenAI's layout (text tower at the top level) saved by OpenAI: its meta keys or its fp16 weights."""
    if not isinstance(state, dict) or "visual.proj" not in state or any(k.startswith("text.") for k in state):
        return False
    return any(k in state for k in _OPENAI_META_KEYS) or state["visual.proj"].dtype == torch.float16


def _from_openai_state_dict(state: dict[str, torch.Tensor], quick_gelu: bool) -> nn.Module:
    state = {k: v for k, v in state.items() if k not in (*_OPENAI_META_KEYS, "attn_mask")}
    try:
        model = build_model_from_openai_state_dict(dict(state), quick_gelu=quick_gelu, cast_dtype=None)
    except (KeyError, RuntimeError) as e:
        raise BackboneError(f"not an OpenAI CLIP ViT checkpoint: {e}") from e
    # open_clip builds in fp16; reload so that fp32 checkpoints keep their full precision.
    model.float().load_state_dict(state)
    model.visual.preprocess_cfg = {"mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD}
    return model


def _fetch_pretrained(name: str, tag: str, tag_cfg: dict[str, Any]) -> Path:
    """The local file of a pretrained tag: from the caches if there, else downloaded; offline, a clear error."""
    cached = _cached_pretrained(tag_cfg)
    if cached is not None:
        return cached
    url = tag_cfg.get("url", "")
    hint = (
        f"Download the weights on a machine with a network ({url or 'hf-hub:' + tag_cfg.get('hf_hub', '')}) "
        f"and pass the file with --pretrained /path/to/file (OpenAI .pt or open_clip checkpoints both work), "
        f"or copy a filled Hugging Face cache (~/.cache/huggingface) here. For a run on random weights that "
        f"only tests the pipeline: --pretrained none"
    )
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or not _reachable(tag_cfg):
        raise BackboneError(f"cannot download the {name}/{tag} CLIP weights: no network. {hint}")
    try:
        return Path(download_pretrained(tag_cfg))
    except Exception as e:
        raise BackboneError(f"downloading the {name}/{tag} CLIP weights failed ({e}). {hint}") from e


def _cached_pretrained(tag_cfg: dict[str, Any]) -> Path | None:
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import hf_hub_download

        repo, filename = os.path.split(hub)
        names = (
            [filename] if filename else [open_clip.constants.HF_SAFE_WEIGHTS_NAME, open_clip.constants.HF_WEIGHTS_NAME]
        )
        for candidate in names:
            try:
                return Path(hf_hub_download(repo, candidate, local_files_only=True))
            except Exception:
                continue
    url = tag_cfg.get("url", "")
    if url:
        local = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if local.is_file():
            return local
    return None


def _reachable(tag_cfg: dict[str, Any]) -> bool:
    """One quick connection attempt, so that an offline machine fails in seconds rather than after retries."""
    if tag_cfg.get("hf_hub"):
        from huggingface_hub import constants

        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    else:
        host = urlparse(tag_cfg.get("url", "")).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        return False
    return True


def _check_supported(clip: nn.Module, name: str) -> None:
    visual = getattr(clip, "visual", None)
    ok = (
        isinstance(visual, VisionTransformer)
        and visual.attn_pool is None
        and visual.pool_type == "tok"
        and not visual.final_ln_after_pool
        and all(isinstance(b, ResidualAttentionBlock) for b in visual.transformer.resblocks)
    )
    if not ok:
        raise BackboneError(
            f"{name} is not a plain ViT CLIP (class-token pooling, standard attention blocks); kanoclip's V-V path "
            "needs one, e.g. ViT-L-14-336, ViT-B-16, ViT-L-14 or ViT-H-14"
        )
