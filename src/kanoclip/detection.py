"""Detector: images in, anomaly scores and maps out (SPEC §3.5) - the one engine of `detect`, `evaluate`,
`calibrate`, `serve` and `reproduce`.

Decoding and resizing run in DataLoader workers, overlapped with the forward pass; the forward runs under
`torch.inference_mode` with bf16/fp16 autocast when asked; text features are computed once per class. A file that
cannot be read becomes a failed `Prediction` with the reason, and the batch goes on.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import checkpoint, distributed
from ._files import atomic_write_bytes, atomic_write_json, npy_bytes
from .config import KAnoCLIPConfig
from .devices import autocast_dtype, die_with_parent, resolve_device
from .engines import exported_forward
from .errors import ConfigError, KanoclipError
from .images import Crop, crop_array, read_image, to_rgb
from .inputs import expand_inputs, output_names
from .model import KAnoCLIP
from .references import ReferenceBank
from .thresholds import Thresholds
from .visualize import mask_image, overlay, to_png

ImageLike = NDArray[np.uint8] | Image.Image | str | Path | bytes


@dataclass
class Prediction:
    """One image's result, in the field's names (anomalib's). `error` is set, and the rest None, when the image
    could not be read; `pred_label` and `pred_mask` are set when the detector has thresholds."""

    source: str
    pred_score: float | None = None
    anomaly_map: NDArray[np.float32] | None = None  # (H, W), the image's own size unless asked otherwise
    pred_label: int | None = None
    pred_mask: NDArray[np.bool_] | None = None
    image: NDArray[np.uint8] | None = None  # the decoded image, when asked for (reports, overlays)
    error: str | None = None


@dataclass
class Collected:
    """Scores (NaN where unreadable) and run-resolution float16 maps of a list of images, for metrics."""

    scores: NDArray[np.float64]
    maps: NDArray[np.float16]  # (N, S, S)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> NDArray[np.bool_]:
        return ~np.isnan(self.scores)


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
            rgb = crop_array(read_image(path), crop)
        except KanoclipError as e:
            return {"index": i, "error": str(e)}
        item: dict[str, Any] = {"index": i, "pixels": to_tensor(rgb, self.size), "hw": rgb.shape[:2]}
        if self.keep_image:
            item["image"] = rgb
        return item


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


class Detector:
    """A ready-to-run model: `Detector().predict(image) -> (score, map)`.

    Args:
        checkpoint_dir: a folder written by `kanoclip train`; None runs training-free (knowledge text features).
        config: the model config in training-free mode (default: ViT-L-14-336, OpenAI weights, 518 px).
        overrides: config fields to change on a checkpoint (e.g. `pretrained="/models/ViT-L-14-336px.pt"`).
        class_name: training-free mode: the product's class name; its text comes from the knowledge base and the
            prompt ensemble (`set_class` changes it, e.g. per class of a dataset).
        compile: wrap the forward in `torch.compile` (GPU; the first batch is slow).
        thresholds: decision thresholds; default: the checkpoint's calibration, if any.
        references: good parts (SPEC §9): a bank file from `kanoclip reference build`, a `ReferenceBank`, or
            images (paths, bytes, arrays, PIL); `add_references` adds more, `clear_references` returns to zero-shot.
        engine, model_dir: "torch" runs the model; "onnxruntime" / "openvino" run a folder written by
            `kanoclip export` (its text, references and thresholds were baked in at export) on the CPU.
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
        class_name: str = "object",
        compile: bool = False,
        thresholds: Thresholds | None = None,
        references: str | Path | ReferenceBank | Sequence[ImageLike] | None = None,
        engine: str = "torch",
        model_dir: str | Path | None = None,
    ) -> None:
        self.engine, self.model_dir = engine, model_dir
        self.batch_size, self.workers = batch_size, workers
        self.references: ReferenceBank | None = None
        self.model: KAnoCLIP | None = None
        self.manifest: dict[str, Any] | None = None
        if engine != "torch":
            self._load_exported(engine, model_dir, checkpoint_dir, overrides, thresholds, references)
            return
        self.device = resolve_device(device)
        self.dtype = autocast_dtype(self.device, precision)
        self.precision = precision
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        checkpoint_thresholds = Thresholds()
        if checkpoint_dir is not None:
            self.model = checkpoint.load(checkpoint_dir, **(overrides or {}))
            checkpoint_thresholds = Thresholds.from_calibration(
                checkpoint.read_document(checkpoint_dir).get("calibration")
            )
        else:
            self.model = KAnoCLIP((config or KAnoCLIPConfig()).replace(**(overrides or {})))
        self.thresholds = thresholds if thresholds is not None else checkpoint_thresholds
        self.config = self.model.config
        self.model.eval().to(self.device)
        self._class_text: dict[str, tuple[torch.Tensor, dict[str, Any]]] = {}
        self.text_record: dict[str, Any] = {"source": "learned prompts (checkpoint)"}
        if checkpoint_dir is None:
            self.set_class(class_name)
        self.checkpoint_sha256 = checkpoint.weights_sha256(checkpoint_dir) if checkpoint_dir is not None else None
        if isinstance(references, ReferenceBank) or (
            isinstance(references, str | Path) and Path(references).is_file() and Path(references).suffix == ".kref"
        ):
            self.use_references(references if isinstance(references, ReferenceBank) else ReferenceBank.load(references))
        elif references is not None:
            items = [references] if isinstance(references, str | Path) else list(references)
            paths = [r for r in items if isinstance(r, str | Path)]
            self.add_references(expand_inputs(paths)[0] if len(paths) == len(items) else items)
        self._forward = torch.compile(self.model) if compile else self.model

    def _load_exported(
        self,
        engine: str,
        model_dir: str | Path | None,
        checkpoint_dir: str | Path | None,
        overrides: dict[str, Any] | None,
        thresholds: Thresholds | None,
        references: object,
    ) -> None:
        """An exported folder: the manifest gives the config, text, bank and thresholds it was exported with."""
        if model_dir is None:
            raise ConfigError(f"--engine {engine} runs an exported folder: pass --model DIR (from `kanoclip export`)")
        if checkpoint_dir is not None or references is not None:
            raise ConfigError(
                "an exported model carries its checkpoint and references: export again with them instead of passing "
                "--checkpoint/--reference beside --model"
            )
        self._graph, self.manifest = exported_forward(engine, model_dir, (overrides or {}).get("image_size"))
        self.device, self.dtype, self.precision = torch.device("cpu"), None, self.manifest["precision"]
        self.checkpoint_dir, self.checkpoint_sha256 = None, self.manifest["checkpoint_sha256"]
        self.config = KAnoCLIPConfig.from_dict(self.manifest["config"])
        baked = self.manifest["thresholds"]
        self.thresholds = thresholds if thresholds is not None else Thresholds(baked["image"], baked["map"])
        self.text_record = {**self.manifest["text"], "baked_at_export": True}

    @property
    def training_free(self) -> bool:
        return self.checkpoint_dir is None and self.model is not None

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def _torch_model(self, what: str) -> KAnoCLIP:
        if self.model is None:
            raise ConfigError(f"{what} needs the PyTorch engine: an exported model has it baked in; export again")
        return self.model

    def set_class(self, name: str) -> None:
        """Training-free mode: text features for this class (computed once per class); a checkpoint's learned
        prompts are class-agnostic, so there it does nothing."""
        if not self.training_free:
            return
        from .knowledge import training_free_text

        model = self._torch_model("set_class")
        if name not in self._class_text:
            self._class_text[name] = training_free_text(model, name)
        text, self.text_record = self._class_text[name]
        model.use_text_features(text)

    def reference_identity(self) -> dict[str, Any]:
        """What a reference bank must have been built with to be used here."""
        cfg = self.config
        return {
            "backbone_fingerprint": self._torch_model("references").backbone_fingerprint,
            "image_size": cfg.image_size,
            "vv_start_layer": cfg.vv_start_layer,
            "tap_layers": list(cfg.tap_layers or ()),
            "tap_mode": cfg.tap_mode,
            "checkpoint_sha256": self.checkpoint_sha256,
        }

    def use_references(self, bank: ReferenceBank | None) -> None:
        """Score against this bank from now on (None: zero-shot); a bank made for another model is refused. The
        model's bank is swapped in one assignment, so a forward sees the old bank or the new one, never a mix."""
        model = self._torch_model("references")
        if bank is None:
            self.references, model.reference_levels = None, None
            return
        bank.check(self.reference_identity())
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32  # fp16 banks on GPU (SPEC §9)
        levels = [t.to(self.device, dtype) for t in bank.levels]
        self.references, model.reference_levels = bank, levels

    def clear_references(self) -> None:
        self.use_references(None)

    def add_references(self, images: Sequence[ImageLike]) -> ReferenceBank:
        """Good parts into the bank (decoded here; an unreadable one is an error: a reference must be trusted).
        Augmented as `reference_augment` says; reduced by coreset past `reference_max_patches` per level."""
        model, cfg = self._torch_model("add_references"), self.config
        arrays = [_as_rgb(image) for image in images]
        sources = [{"path": _source(i), "sha256": _sha256(i, a)} for i, a in zip(images, arrays, strict=True)]
        chunks: list[list[torch.Tensor]] = []
        for start in range(0, len(arrays), self.batch_size):
            pixels = torch.stack([to_tensor(a, self.image_size) for a in arrays[start : start + self.batch_size]])
            pixels = _augmented(pixels, cfg.reference_augment).to(self.device)
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                chunks.append(model.reference_features(pixels))
        new = [torch.cat([c[i] for c in chunks]).float().cpu() for i in range(len(chunks[0]))] if chunks else []
        bank = self.references or ReferenceBank([torch.empty(0, 0) for _ in new], self.reference_identity())
        if new:
            bank = bank.extended(new, sources, cfg.reference_max_patches)
        self.use_references(bank)
        return bank

    def describe(self) -> dict[str, Any]:
        """What produced the outputs, written beside them: model, resolved config, text, thresholds, precision."""
        exported = self.manifest or {}
        return {
            "model": self.model.backbone_source if self.model else exported["model"],
            "backbone_fingerprint": self.model.backbone_fingerprint if self.model else exported["backbone_fingerprint"],
            "checkpoint": str(self.checkpoint_dir) if self.checkpoint_dir else exported.get("checkpoint"),
            "config": self.config.to_dict(),
            "text": self.text_record,
            "thresholds": {"image": self.thresholds.image, "map": self.thresholds.map},
            "engine": self.engine if self.model else f"{self.engine} ({self.model_dir})",
            "device": str(self.device),
            "precision": self.precision,
            "random_weights": self.config.pretrained == "none",
            "references": self.references.describe() if self.references else exported.get("references"),
        }

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) in [0, 1] at the run size -> scores (B,) and maps (B, S, S), float32 on the CPU."""
        if self.model is None:
            return self._graph(pixels.float())
        pixels = pixels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            out = self._forward(pixels)
        return out.scores.float().cpu(), out.maps.float().cpu()

    def predict(self, image: ImageLike) -> tuple[float, NDArray[np.float32]]:
        """One image (array (H, W, 3) uint8, PIL image, path or encoded bytes) -> (score, map at its own size)."""
        p = self.predict_many([image])[0]
        assert p.pred_score is not None and p.anomaly_map is not None
        return p.pred_score, p.anomaly_map

    def predict_many(self, images: Sequence[ImageLike]) -> list[Prediction]:
        """Images decoded here, run as one batch; maps at each image's own size."""
        arrays = [_as_rgb(image) for image in images]
        scores, maps = self.forward(torch.stack([to_tensor(a, self.image_size) for a in arrays]))
        return [
            self._prediction(_source(image), float(s), _resize_map(m, a.shape[:2]))
            for image, s, m, a in zip(images, scores, maps, arrays, strict=True)
        ]

    def _prediction(
        self, source: str, score: float, amap: NDArray[np.float32], image: NDArray[np.uint8] | None = None
    ) -> Prediction:
        t = self.thresholds
        label = None if t.image is None else int(score >= t.image)
        mask = None if t.map is None else amap >= t.map
        return Prediction(source, score, amap, label, mask, image)

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
            worker_init_fn=die_with_parent,
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
                    results[b["index"]] = self._prediction(str(pairs[b["index"]][0]), float(s), amap, b.get("image"))
            for b in batch:
                yield results[b["index"]]
            if progress is not None:
                progress.update(len(batch))

    def collect(self, items: Sequence[tuple[str | Path, Crop | None]], progress: Any = None) -> Collected | None:
        """Scores and run-resolution maps (float16) of many images, for metrics and thresholds; memory is one
        float16 map per image. Under `torchrun` each rank runs its whole batches (`shard_batches`) and rank 0 gets
        everything, in order, exactly as one process would have computed it; other ranks get None."""
        place = distributed.current()
        mine = distributed.shard_batches(len(items), self.batch_size, place)
        size = self.image_size
        out = Collected(np.full(len(mine), np.nan), np.zeros((len(mine), size, size), dtype=np.float16))
        for i, p in enumerate(self.run([items[j] for j in mine], own_size=False, progress=progress)):
            if p.error is not None or p.pred_score is None:
                out.failed.append(p.error or "unknown error")
                continue
            out.scores[i], out.maps[i] = p.pred_score, p.anomaly_map
        if place.world == 1:
            return out
        parts = distributed.gather_to_main((mine, out), place)
        if parts is None:
            return None
        merged = Collected(np.full(len(items), np.nan), np.zeros((len(items), size, size), dtype=np.float16))
        for indices, part in parts:
            merged.scores[indices], merged.maps[indices] = part.scores, part.maps
            merged.failed += part.failed
        return merged


def _augmented(pixels: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, 3, S, S) references and their rotations (and flips), as AnomalyDINO augments small banks."""
    if mode == "none":
        return pixels
    views = [torch.rot90(pixels, k, dims=(2, 3)) for k in range(4)]
    if mode == "rot90+flip":
        views += [v.flip(3) for v in views]
    return torch.cat(views)


def _sha256(image: ImageLike, rgb: NDArray[np.uint8]) -> str:
    """The file's bytes for paths and encoded bytes, else the decoded pixels."""
    if isinstance(image, str | Path):
        return hashlib.sha256(Path(image).read_bytes()).hexdigest()
    return hashlib.sha256(image if isinstance(image, bytes) else rgb.tobytes()).hexdigest()


def _source(image: ImageLike) -> str:
    return str(image) if isinstance(image, str | Path) else type(image).__name__


def _as_rgb(image: ImageLike) -> NDArray[np.uint8]:
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ConfigError(f"expected an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
        return image
    if isinstance(image, Image.Image):
        return to_rgb(image)
    return read_image(image)


def _resize_map(amap: torch.Tensor, hw: tuple[int, int]) -> NDArray[np.float32]:
    if tuple(amap.shape) != tuple(hw):
        amap = F.interpolate(amap[None, None], size=tuple(hw), mode="bilinear", align_corners=False)[0, 0]
    return amap.numpy().astype(np.float32, copy=False)


@dataclass
class DetectSummary:
    images: int
    failed: list[tuple[str, str]]
    skipped_masks: int
    scores_csv: Path


def write_outputs(out: Path, name: str, p: Prediction, save_maps: bool) -> str:
    """One image's files below `out` (the map, its overlay and, with a map threshold, its mask), each written
    atomically; returns the map's path relative to `out`, as scores.csv names it."""
    map_file = f"maps/{name}.npy"
    if save_maps and p.image is not None and p.anomaly_map is not None:
        atomic_write_bytes(out / map_file, npy_bytes(p.anomaly_map))
        picture = overlay(p.image, p.anomaly_map, mask=p.pred_mask)
        atomic_write_bytes(out / f"maps/{name}.overlay.png", to_png(picture))
        if p.pred_mask is not None:
            atomic_write_bytes(out / f"maps/{name}.mask.png", to_png(mask_image(p.pred_mask)))
    return map_file


def detect_files(
    detector: Detector,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    save_maps: bool = True,
) -> DetectSummary:
    """`kanoclip detect`: scores.csv (path, score[, label], map) and per image `maps/<name>.npy` (the map at the
    image's own size), `<name>.overlay.png` and, with a map threshold, `<name>.mask.png`; `<name>` is the image's
    path below the inputs' common folder, suffix included, so every image has its own files. Rows reach a
    `.partial` file as images finish, so a crash keeps what was done; the file is renamed when complete. run.json
    records what produced the outputs."""
    paths, skipped = expand_inputs(inputs)
    names = output_names(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "run.json", {"inputs": [str(i) for i in inputs], **detector.describe()}, indent=2)
    labelled = detector.thresholds.image is not None
    failed: list[tuple[str, str]] = []
    partial = out / "scores.csv.partial"
    bar = tqdm(total=len(paths), desc="detect", unit="image")
    with partial.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "score", *(["label"] if labelled else []), *(["map"] if save_maps else [])])
        for name, p in zip(names, detector.run(paths, keep_image=save_maps, progress=bar), strict=True):
            if p.error is not None or p.pred_score is None or p.anomaly_map is None:
                failed.append((p.source, p.error or "unknown error"))
                continue
            map_file = write_outputs(out, name, p, save_maps)
            label = [p.pred_label] if labelled else []
            writer.writerow([p.source, f"{p.pred_score:.6f}", *label, *([map_file] if save_maps else [])])
            f.flush()
    bar.close()
    partial.replace(out / "scores.csv")
    return DetectSummary(len(paths), failed, skipped, out / "scores.csv")
