"""Detector: images in, anomaly scores and maps out (SPEC §3.5) - the engine of `detect`, `evaluate` and `serve`.

Decoding and resizing run in DataLoader workers, overlapped with the forward pass; the forward runs under
`torch.inference_mode` with bf16/fp16 autocast on GPU; text features are computed once per run. A file that cannot
be read becomes a failed `Prediction` with the reason, and the batch goes on.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import checkpoint
from ._files import atomic_write_bytes, npy_bytes
from .config import KAnoCLIPConfig
from .errors import ConfigError, ImageReadError, KanoclipError
from .images import IMAGE_SUFFIXES, is_image_file, read_image
from .model import KAnoCLIP
from .visualize import mask_image, overlay, to_png

Crop = tuple[int, int, int, int]


@dataclass
class Prediction:
    """One image's result; `error` is set (and score/map are None) when the image could not be read."""

    source: str
    score: float | None = None
    map: NDArray[np.float32] | None = None  # (H, W), the image's own size unless asked otherwise
    image: NDArray[np.uint8] | None = None  # the decoded image, when asked for (reports, overlays)
    error: str | None = None


def to_tensor(rgb: NDArray[np.uint8], size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float in [0, 1]; bicubic with antialias, as the model resizes."""
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255)
    if x.shape[1:] != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
    return x


class ImageFiles(Dataset[dict[str, Any]]):
    """Files (optionally cropped) decoded and resized in workers; read errors travel as data, not exceptions."""

    def __init__(self, items: Sequence[tuple[str | Path, Crop | None]], size: int, keep_image: bool = False) -> None:
        self.items, self.size, self.keep_image = list(items), size, keep_image

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, crop = self.items[i]
        try:
            rgb = read_image(path)
            if crop is not None:
                rgb = rgb[crop[1] : crop[3], crop[0] : crop[2]]
        except KanoclipError as e:
            return {"index": i, "error": str(e)}
        item: dict[str, Any] = {"index": i, "pixels": to_tensor(rgb, self.size), "hw": rgb.shape[:2]}
        if self.keep_image:
            item["image"] = rgb
        return item


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use --device cpu")
    return resolved


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """None means fp32. auto: bf16 on a GPU that has it, fp16 on older GPUs, fp32 on CPU."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in ("bf16", "fp16"):
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    return torch.bfloat16 if precision == "bf16" else torch.float16


class Detector:
    """A ready-to-run model: `Detector().predict(image) -> (score, map)`.

    Args:
        checkpoint_dir: a folder written by `kanoclip train`; None runs training-free (knowledge text features).
        config: the model config in training-free mode (default: ViT-L-14-336, OpenAI weights, 518 px).
        overrides: config fields to change on a checkpoint (e.g. `pretrained="/models/ViT-L-14-336px.pt"`).
        knowledge_class: the knowledge-base class whose sentences give training-free text features.
        compile: wrap the forward in `torch.compile` (GPU; the first batch is slow).
        calibration: a standalone calibration JSON (training-free mode; a checkpoint carries its own).
    """

    def __init__(
        self,
        checkpoint_dir: str | Path | None = None,
        config: KAnoCLIPConfig | None = None,
        overrides: dict[str, Any] | None = None,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 8,
        workers: int = 2,
        knowledge_class: str = "object",
        compile: bool = False,
        calibration: str | Path | None = None,
    ) -> None:
        from .knowledge import use_training_free

        self.device = resolve_device(device)
        self.dtype = autocast_dtype(self.device, precision)
        self.batch_size, self.workers = batch_size, workers
        self.calibration: dict[str, Any] = {}
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if checkpoint_dir is not None:
            self.model = checkpoint.load(checkpoint_dir, **(overrides or {}))
            self.calibration = checkpoint.read_document(checkpoint_dir).get("calibration", {})
        else:
            self.model = KAnoCLIP((config or KAnoCLIPConfig()).replace(**(overrides or {})))
        self.model.eval().to(self.device)
        if checkpoint_dir is None:
            use_training_free(self.model, cls=knowledge_class)
        if calibration is not None:
            from .calibration import load_standalone

            self.calibration = load_standalone(calibration, self.model.config.to_dict())
        self._forward = torch.compile(self.model) if compile else self.model

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def threshold(self) -> float | None:
        value = self.calibration.get("image_threshold")
        return None if value is None else float(value)

    @property
    def map_threshold(self) -> float | None:
        value = self.calibration.get("map_threshold")
        return None if value is None else float(value)

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) in [0, 1] at the run size -> scores (B,) and maps (B, S, S), float32 on the CPU."""
        pixels = pixels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            out = self._forward(pixels)
        return out.scores.float().cpu(), out.maps.float().cpu()

    def predict(self, image: NDArray[np.uint8] | Image.Image | str | Path | bytes) -> tuple[float, NDArray[np.float32]]:
        """One image (array (H, W, 3) uint8, PIL image, path or encoded bytes) -> (score, map at its own size)."""
        return self.predict_many([image])[0]

    def predict_many(
        self, images: Sequence[NDArray[np.uint8] | Image.Image | str | Path | bytes]
    ) -> list[tuple[float, NDArray[np.float32]]]:
        """Images decoded here, run as one batch; maps at each image's own size."""
        arrays = [_as_rgb(image) for image in images]
        scores, maps = self.forward(torch.stack([to_tensor(a, self.image_size) for a in arrays]))
        return [(float(s), _resize_map(m, a.shape[:2])) for s, m, a in zip(scores, maps, arrays, strict=True)]

    def run(
        self,
        items: Sequence[str | Path | tuple[str | Path, Crop | None]],
        own_size: bool = True,
        keep_image: bool = False,
        progress: Any = None,
    ) -> Iterator[Prediction]:
        """Files through the DataLoader, in order. Maps at each image's own size, or at the run size."""
        pairs = [item if isinstance(item, tuple) else (item, None) for item in items]
        loader = DataLoader(
            ImageFiles(pairs, self.image_size, keep_image),
            batch_size=self.batch_size,
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for batch in loader:
            good = [b for b in batch if "error" not in b]
            results: dict[int, Prediction] = {
                b["index"]: Prediction(str(pairs[b["index"]][0]), error=b["error"]) for b in batch if "error" in b
            }
            if good:
                scores, maps = self.forward(torch.stack([b["pixels"] for b in good]))
                for b, s, m in zip(good, scores, maps, strict=True):
                    amap = _resize_map(m, b["hw"]) if own_size else m.numpy()
                    results[b["index"]] = Prediction(str(pairs[b["index"]][0]), float(s), amap, b.get("image"))
            for b in batch:
                yield results[b["index"]]
            if progress is not None:
                progress.update(len(batch))


def _as_rgb(image: NDArray[np.uint8] | Image.Image | str | Path | bytes) -> NDArray[np.uint8]:
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ConfigError(f"expected an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
        return image
    if isinstance(image, Image.Image):
        from .images import to_rgb

        return to_rgb(image)
    return read_image(image)


def _resize_map(amap: torch.Tensor, hw: tuple[int, int]) -> NDArray[np.float32]:
    if tuple(amap.shape) != tuple(hw):
        amap = F.interpolate(amap[None, None], size=tuple(hw), mode="bilinear", align_corners=False)[0, 0]
    return amap.numpy().astype(np.float32, copy=False)


MASK_FOLDERS = ("ground_truth", "masks", "mask", "anomaly_mask", "label", "labels")
MASK_SUFFIXES = ("_mask", "_label", "_gt", "_segmentation")


def looks_like_mask(path: Path) -> bool:
    """Ground-truth files inside dataset folders (MVTec `ground_truth/`, KolektorSDD `PartK_label.bmp`)."""
    lowered = [part.lower() for part in path.parts[:-1]]
    return any(f in lowered for f in MASK_FOLDERS) or path.stem.lower().endswith(MASK_SUFFIXES)


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], int]:
    """Files, folders (searched recursively) and glob patterns -> image files in a stable order, and the number of
    ground-truth masks skipped inside folders. A path that matches nothing is an error that names it."""
    found: dict[Path, None] = {}
    skipped = 0
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir() or (not path.exists() and glob.has_magic(str(raw))):
            candidates = path.rglob("*") if path.is_dir() else map(Path, glob.glob(str(path), recursive=True))
            files = sorted(p for p in candidates if is_image_file(p))
            images = [p for p in files if not looks_like_mask(p)]
            skipped += len(files) - len(images)
            if not images:
                raise ImageReadError(f"{raw}: no image files found ({', '.join(IMAGE_SUFFIXES)})")
            found.update(dict.fromkeys(images))
        elif path.exists():
            found[path] = None  # an explicit file is always tried; a bad one fails by itself
        else:
            raise ImageReadError(f"{raw}: no such file or folder")
    return list(found), skipped


def output_names(paths: Sequence[Path]) -> list[str]:
    """Unique, readable output names: the path below the inputs' common folder, '/' turned into '__'."""
    resolved = [p.resolve() for p in paths]
    if not resolved:
        return []
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    return ["__".join(p.relative_to(root).with_suffix("").parts) for p in resolved]


@dataclass
class DetectSummary:
    images: int
    failed: list[tuple[str, str]]
    skipped_masks: int
    scores_csv: Path


def detect_files(
    detector: Detector,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    threshold: float | None = None,
    save_maps: bool = True,
) -> DetectSummary:
    """`kanoclip detect`: scores.csv (path, score[, label]) and per image a heatmap overlay PNG and the raw map
    (.npy, the image's own size). Rows reach scores.csv as images finish, so a crash keeps what was done; the file
    is complete when its last line is written."""
    paths, skipped = expand_inputs(inputs)
    names = output_names(paths)
    out = Path(out_dir)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    threshold = threshold if threshold is not None else detector.threshold
    map_threshold = detector.map_threshold
    failed: list[tuple[str, str]] = []
    partial = out / "scores.csv.partial"
    bar = tqdm(total=len(paths), desc="detect", unit="image")
    with partial.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "score", *(["label"] if threshold is not None else [])])
        for name, p in zip(names, detector.run(paths, keep_image=save_maps, progress=bar), strict=True):
            if p.error is not None or p.score is None or p.map is None:
                failed.append((p.source, p.error or "unknown error"))
                continue
            label = [int(p.score >= threshold)] if threshold is not None else []
            writer.writerow([p.source, f"{p.score:.6f}", *label])
            f.flush()
            if save_maps and p.image is not None:
                atomic_write_bytes(out / "maps" / f"{name}.npy", npy_bytes(p.map))
                mask = p.map >= map_threshold if map_threshold is not None else None
                atomic_write_bytes(out / "maps" / f"{name}.png", to_png(overlay(p.image, p.map, mask=mask)))
                if mask is not None:
                    atomic_write_bytes(out / "maps" / f"{name}_mask.png", to_png(mask_image(mask)))
    bar.close()
    partial.replace(out / "scores.csv")
    return DetectSummary(len(paths), failed, skipped, out / "scores.csv")
