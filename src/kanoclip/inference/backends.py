"""What runs the forward (SPEC §10): the KAnoCLIP model under PyTorch, or a folder written by `kanoclip export` under
ONNX Runtime / OpenVINO. Both are a `Backend`: RGB in [0, 1] at the run resolution (B, 3, S, S) in, `pred_score`
(B,) and `anomaly_map` (B, S, S) out, plus what produced them; decoding, batching and every output stay the
runner's (`detection.Detector`), whatever runs the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from kanoclip._files import read_json_object
from kanoclip._version import __version__
from kanoclip.errors import ConfigError
from kanoclip.inference.config import RunConfig
from kanoclip.inference.devices import autocast_dtype, resolve_device
from kanoclip.inference.thresholds import Thresholds
from kanoclip.model import checkpoint, published
from kanoclip.model.config import KAnoCLIPConfig
from kanoclip.model.kanoclip import KAnoCLIP

MANIFEST = "manifest.json"
EXPORT_EXTRA = "pip install 'kanoclip[export]'  (onnx, onnxscript, onnxruntime, openvino, nncf)"
OPENVINO_HINT = {"fp32": "f32", "fp16": "f32", "bf16": "bf16", "int8": "f32"}  # compute precision on a CPU
# What a backend can do besides its forward: the runner refuses the rest with a message.
CLASS_TEXT, REFERENCES = "class_text", "references"

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Backend(Protocol):
    """One engine behind one small interface."""

    engine: str
    config: KAnoCLIPConfig
    device: torch.device
    supports: frozenset[str]
    thresholds: Thresholds  # what the model file carries (a checkpoint's calibration, an export's baked values)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) in [0, 1] -> pred_score (B,) and anomaly_map (B, S, S), float32 on the CPU."""
        ...

    def describe(self) -> dict[str, Any]:
        """What produced the outputs: model, fingerprint, checkpoint, config, engine, device, precision."""
        ...


def require(module: str) -> Any:
    """An optional dependency, or an error that names the install line."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{module} is not installed: {EXPORT_EXTRA}") from e


class TorchBackend:
    """The KAnoCLIP model on a torch device, under bf16/fp16 autocast when asked."""

    engine = "torch"
    supports = frozenset({CLASS_TEXT, REFERENCES})

    def __init__(self, run: RunConfig) -> None:
        self.device = resolve_device(run.device)
        self.dtype = autocast_dtype(self.device, run.precision)
        self.precision = run.precision
        # a folder, hf://ORG/NAME[@REV] found in (or fetched into) the Hugging Face cache, or AnomalyCLIP's published
        # prompts (fetched and converted once): resolved once, here
        self.located = None
        if run.checkpoint is not None:
            self.located = checkpoint.locate(published.resolve_checkpoint(run.checkpoint, dict(run.model_changes)))
        self.checkpoint = self.located.folder if self.located is not None else None
        if self.checkpoint is not None:
            self.model = checkpoint.load(self.checkpoint, **dict(run.model_changes))
            document = checkpoint.read_document(self.checkpoint)
            self.thresholds = Thresholds.from_calibration(document.get("calibration"))
            # load() checked the file against the recorded hash: no second pass over the weights
            recorded = document.get("weights_sha256")
            self.checkpoint_sha256: str | None = recorded or checkpoint.weights_sha256(self.checkpoint)
        else:
            self.model = KAnoCLIP(run.model_config())
            self.thresholds, self.checkpoint_sha256 = Thresholds(), None
        self.config = self.model.config
        self.owner: object | None = None  # the detector whose text and bank the model holds now (`Detector._apply`)
        self.model.eval().to(self.device)
        self._forward = torch.compile(self.model) if run.compile else self.model

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = pixels.to(self.device, non_blocking=True)
        with self.autocast():
            out = self._forward(pixels)
        return out.pred_score.float().cpu(), out.anomaly_map.float().cpu()

    def reference_features(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Good parts at the run resolution -> unit patch features per tap level, float32 on the CPU."""
        with self.autocast():
            levels = self.model.reference_features(pixels.to(self.device))
        return [level.float().cpu() for level in levels]

    def reference_identity(self) -> dict[str, Any]:
        """What a reference bank must have been built with to be used here."""
        cfg = self.config
        return {
            "backbone_fingerprint": self.model.backbone_fingerprint,
            "image_size": cfg.image_size,
            "vv_start_layer": cfg.vv_start_layer,
            "tap_layers": list(cfg.tap_layers or ()),
            "tap_mode": cfg.tap_mode,
            "checkpoint_sha256": self.checkpoint_sha256,
        }

    def on_device(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """A bank as the model searches it: on the device, in fp16 on a GPU (SPEC §9). Done once per bank, not per
        forward, so switching between detectors that share this model costs nothing."""
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        return [t.to(self.device, dtype) for t in levels]

    def setup(self, **parts: Any) -> None:
        """Text features and banks reach the model through its one public set-up (`KAnoCLIP.setup`)."""
        bank = parts.get("bank", ...)
        if isinstance(bank, list):
            parts["bank"] = self.on_device(bank)
        self.model.setup(**parts)

    def describe(self) -> dict[str, Any]:
        """A Hub model adds `hub`: its repository, revision, the commit that revision resolved to, and the folder."""
        hub = self.located.hub if self.located is not None else None
        return {
            "model": self.model.backbone_source,
            "backbone_fingerprint": self.model.backbone_fingerprint,
            "checkpoint": self.located.name if self.located else None,
            **({"hub": {**hub, "folder": str(self.checkpoint)}} if hub else {}),
            "checkpoint_sha256": self.checkpoint_sha256,
            "config": self.config.to_dict(),
            "engine": self.engine,
            "device": str(self.device),
            "precision": self.precision,
        }


def read_manifest(folder: str | Path, image_size: int | None = None) -> dict[str, Any]:
    """An exported folder's manifest, refused when another kanoclip version wrote it or when it was exported for
    another resolution than the one asked for."""
    path = Path(folder).expanduser() / MANIFEST
    manifest = read_json_object(
        path, ConfigError, "--exported takes a folder written by `kanoclip export`", "export the model again"
    )
    _check_manifest(path, manifest)
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


MANIFEST_FIELDS = {"format": str, "precision": str, "files": dict, "config": dict, "image_size": int}
MANIFEST_FIELDS |= {"thresholds": dict, "text": dict}


def _check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """A manifest edited by hand gets a clear error, not a KeyError later; its files stay inside its folder."""
    again = "export the model again"
    for key, kind in MANIFEST_FIELDS.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{path}: {key!r} is missing or not a {kind.__name__} (edited by hand?); {again}")
    if manifest["format"] not in ("onnx", "openvino") or manifest["precision"] not in OPENVINO_HINT:
        raise ConfigError(
            f"{path}: format {manifest['format']!r} / precision {manifest['precision']!r} is not one kanoclip "
            f"exports (onnx, openvino; {', '.join(OPENVINO_HINT)}); {again}"
        )
    folder = path.parent.resolve()
    files = manifest["files"]
    if not isinstance(files.get("model"), str):
        raise ConfigError(f"{path}: 'files' names no model file; {again}")
    for name in files.values():
        where = (folder / str(name)).resolve()
        if not where.is_relative_to(folder):
            raise ConfigError(f"{path}: the file {name!r} lies outside the exported folder; refused")
        if not where.is_file():
            raise ConfigError(f"{path}: the file {name!r} it names is missing; {again}")


def _onnxruntime_forward(folder: Path, manifest: dict[str, Any]) -> Forward:
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(folder / manifest["files"]["model"]), providers=["CPUExecutionProvider"])

    def forward(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, maps = session.run(None, {"images": np.ascontiguousarray(pixels.numpy(), dtype=np.float32)})
        return torch.from_numpy(scores), torch.from_numpy(maps)

    return forward


def _openvino_forward(folder: Path, manifest: dict[str, Any]) -> Forward:
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


class ExportedBackend:
    """A folder from `kanoclip export` on the CPU: its manifest gives the config, text, bank and thresholds it was
    exported with, so it supports neither class text nor references."""

    supports: frozenset[str] = frozenset()

    def __init__(self, run: RunConfig) -> None:
        assert run.exported is not None  # RunConfig.validate
        self.engine, self.folder = run.engine, Path(run.exported).expanduser()
        self.manifest = read_manifest(self.folder, dict(run.model_changes).get("image_size"))
        if self.manifest["format"] == "openvino" and self.engine != "openvino":
            raise ConfigError(f"{self.folder} holds an OpenVINO model: run it with --engine openvino")
        self.config = KAnoCLIPConfig.from_dict(self.manifest["config"])
        build = _onnxruntime_forward if self.engine == "onnxruntime" else _openvino_forward
        self._graph = build(self.folder, self.manifest)
        self.device = torch.device("cpu")
        baked = self.manifest["thresholds"]
        if "image" in baked:  # folders exported before the thresholds took anomalib's names
            baked = {"image_threshold": baked["image"], "map_threshold": baked["map"]}
        self.thresholds = Thresholds.from_calibration(baked)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._graph(pixels.float())

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            **{k: m[k] for k in ("model", "backbone_fingerprint", "checkpoint", "checkpoint_sha256", "config")},
            "engine": f"{self.engine} ({self.folder})",
            "device": "cpu",
            "precision": m["precision"],
        }


def build_backend(run: RunConfig) -> TorchBackend | ExportedBackend:
    return TorchBackend(run) if run.engine == "torch" else ExportedBackend(run)
