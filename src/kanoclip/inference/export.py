"""`kanoclip export`: one graph from RGB in [0, 1] at the run resolution to scores and maps (SPEC §10).

Normalisation, CLIP-VV, the head, the map blur and any reference bank are inside the graph; text features (learned
prompts or training-free knowledge) are baked in as constants; the batch is dynamic and the resolution fixed. ONNX
through `torch.onnx.export(dynamo=True)`; OpenVINO converted from that ONNX, with fp16-compressed weights, or int8
by NNCF's post-training quantisation (matmuls and convolutions; softmax, norms and the blur stay in floating point)
on calibration images the user gives. The folder is written whole or not at
all, with a manifest that says what it holds.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kanoclip._files import atomic_write_json, read_json_object, umask
from kanoclip._version import __version__
from kanoclip.data.images import decode
from kanoclip.errors import ConfigError
from kanoclip.inference.backends import CLASS_TEXT, MANIFEST, require
from kanoclip.inference.detector import Detector, to_tensor

FORMATS = {"onnx": ("fp32",), "openvino": ("fp32", "fp16", "bf16", "int8")}
OPSET = 18


class _Graph(nn.Module):
    """The model as the exported graph sees it: images in, (scores, maps) out at the run resolution."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.model = detector.model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out.pred_score, out.anomaly_map


def export(
    detector: Detector,
    out_dir: str | Path,
    fmt: str = "onnx",
    precision: str = "fp32",
    calibration_images: Sequence[str | Path] = (),
) -> Path:
    """Write `out_dir` with the model file(s) and manifest.json; returns the folder."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if precision not in FORMATS[fmt]:
        raise ConfigError(f"{fmt} exports take --precision {'|'.join(FORMATS[fmt])}, got {precision!r}")
    if precision == "int8" and not calibration_images:
        raise ConfigError("int8 needs --calibration-images: a few hundred of your own images (good parts will do)")
    if not detector.supports(CLASS_TEXT):
        raise ConfigError("export runs on the PyTorch engine: drop --engine/--exported")
    require("onnx"), require("onnxscript")
    out = Path(out_dir)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files = _write_graph(detector, staging, fmt, precision, calibration_images)
        atomic_write_json(staging / MANIFEST, manifest(detector, fmt, precision, files), indent=2)
        staging.chmod(0o777 & ~umask())  # mkdtemp makes 0700
        _check_replaceable(out)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _check_replaceable(out: Path) -> None:
    """Only an empty folder or an earlier kanoclip export (its manifest says so) may be replaced by an export."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} is a file: name a folder for the export")
    if not any(out.iterdir()):
        return
    try:
        previous = read_json_object(out / MANIFEST, ConfigError, "", "")
    except ConfigError:
        previous = {}
    if "kanoclip_version" not in previous or previous.get("format") not in FORMATS:
        raise ConfigError(
            f"--out {out} holds files that are not a kanoclip export: an export replaces only an empty folder or an "
            "earlier export; choose another --out"
        )


def _write_graph(
    detector: Detector, folder: Path, fmt: str, precision: str, calibration_images: Sequence[str | Path]
) -> dict[str, str]:
    model = detector.model
    size = detector.image_size
    example = torch.rand(2, 3, size, size, device=detector.device)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # OpenVINO converts from an ONNX file in a folder of its own, removed whole: a large graph keeps its weights
    # beside it (model.onnx.data), and none of that belongs in an OpenVINO export
    onnx_file = folder / "model.onnx" if fmt == "onnx" else folder / ".onnx" / "model.onnx"
    onnx_file.parent.mkdir(exist_ok=True)
    with torch.no_grad():
        if not model.training_free:
            model.encode_prompts()  # learned prompts encoded once: a constant of the graph
        torch.onnx.export(
            _Graph(detector).eval(),
            (example,),
            str(onnx_file),
            dynamo=True,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["scores", "maps"],
            dynamic_shapes={"images": {0: batch}},
            verbose=False,
        )
    if fmt == "onnx":
        return {"model": "model.onnx"}
    ov = require("openvino")
    ov_model = ov.convert_model(str(onnx_file))
    if precision == "int8":
        nncf = require("nncf")
        pixels = [to_tensor(decode(p, limits=detector.limits), size)[None].numpy() for p in calibration_images]
        # the MIXED preset (symmetric weights, asymmetric activations) suits transformer activations; NNCF's
        # TRANSFORMER model type gives, with OpenVINO 2026.4, a graph whose dynamic batch no longer compiles
        ov_model = nncf.quantize(
            ov_model, nncf.Dataset(pixels), preset=nncf.QuantizationPreset.MIXED, subset_size=len(pixels)
        )
    ov.save_model(ov_model, str(folder / "model.xml"), compress_to_fp16=precision == "fp16")
    shutil.rmtree(onnx_file.parent)
    return {"model": "model.xml", "weights": "model.bin"}


def manifest(detector: Detector, fmt: str, precision: str, files: dict[str, str]) -> dict[str, Any]:
    """Everything needed to run the folder and to know what it is."""
    size = detector.image_size
    described = detector.describe()
    return {
        "kanoclip_version": __version__,
        "format": fmt,
        "precision": precision,
        "opset": OPSET,
        "files": files,
        "image_size": size,
        "input": {
            "name": "images",
            "shape": ["batch", 3, size, size],
            "dtype": "float32",
            "meaning": f"RGB in [0, 1], resized to {size} x {size} (bicubic, antialiased); normalised inside",
        },
        "outputs": {"scores": ["batch"], "maps": ["batch", size, size]},
        **{
            k: described[k]
            for k in ("model", "backbone_fingerprint", "checkpoint", "checkpoint_sha256", "config", "text")
        },
        "references": described["references"],
        "thresholds": described["thresholds"],
    }
