"""Where the forward runs (SPEC §10): PyTorch on the model itself, or ONNX Runtime / OpenVINO on a folder written by
`kanoclip export`. Every engine takes the same input, RGB in [0, 1] at the run resolution (B, 3, S, S), and returns
scores (B,) and maps (B, S, S), so decoding, resizing and every output stay the Detector's, whatever runs the graph.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .errors import ConfigError

ENGINES = ("torch", "onnxruntime", "openvino")
MANIFEST = "manifest.json"
EXPORT_EXTRA = "pip install 'kanoclip[export]'  (onnx, onnxscript, onnxruntime, openvino, nncf)"
OPENVINO_HINT = {"fp32": "f32", "fp16": "f32", "bf16": "bf16", "int8": "f32"}  # compute precision on a CPU

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def require(module: str) -> Any:
    """An optional dependency, or an error that names the install line."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{module} is not installed: {EXPORT_EXTRA}") from e


def read_manifest(folder: str | Path, image_size: int | None = None) -> dict[str, Any]:
    """An exported folder's manifest, refused when another kanoclip version wrote it or when it was exported for
    another resolution than the one asked for."""
    path = Path(folder).expanduser() / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{path} is missing: --model takes a folder written by `kanoclip export`") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); export the model again") from e
    if manifest.get("kanoclip_version") != __version__:
        raise ConfigError(
            f"{folder} was exported by kanoclip {manifest.get('kanoclip_version')}, this is kanoclip {__version__}: "
            "export it again with this version (graphs and their pre/post-processing change between versions)"
        )
    if image_size is not None and manifest["image_size"] != image_size:
        raise ConfigError(
            f"{folder} was exported for {manifest['image_size']} px, asked to run at {image_size} px: export again "
            f"with --image-size {image_size}, or drop --image-size"
        )
    return manifest


def onnxruntime_forward(folder: Path, manifest: dict[str, Any]) -> Forward:
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(folder / manifest["files"]["model"]), providers=["CPUExecutionProvider"])

    def forward(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, maps = session.run(None, {"images": np.ascontiguousarray(pixels.numpy(), dtype=np.float32)})
        return torch.from_numpy(scores), torch.from_numpy(maps)

    return forward


def openvino_forward(folder: Path, manifest: dict[str, Any]) -> Forward:
    """Compiled for the CPU with the manifest's precision made explicit: OpenVINO's default on CPUs with bf16 is bf16
    (SPEC §10), which would silently change the numbers of an fp32 export."""
    ov = require("openvino")
    hint = OPENVINO_HINT[manifest["precision"]]
    compiled = ov.Core().compile_model(
        str(folder / manifest["files"]["model"]), "CPU", {"INFERENCE_PRECISION_HINT": hint}
    )

    def forward(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = compiled(np.ascontiguousarray(pixels.numpy(), dtype=np.float32))
        return torch.from_numpy(np.asarray(result[0])), torch.from_numpy(np.asarray(result[1]))

    return forward


def exported_forward(engine: str, folder: str | Path, image_size: int | None = None) -> tuple[Forward, dict[str, Any]]:
    """The forward of an exported folder through `engine`, and its manifest."""
    if engine not in ENGINES[1:]:
        raise ConfigError(f"engine must be one of {ENGINES}, got {engine!r}")
    manifest = read_manifest(folder, image_size)
    if manifest["format"] == "openvino" and engine != "openvino":
        raise ConfigError(f"{folder} holds an OpenVINO model: run it with --engine openvino")
    build = onnxruntime_forward if engine == "onnxruntime" else openvino_forward
    return build(Path(folder).expanduser(), manifest), manifest
