"""Detector: images in, anomaly scores and maps out (SPEC §3.5) - the one engine of `detect`, `evaluate`,
`calibrate`, `serve`, `reproduce`, Ray actors and the benchmarks, built only by `Detector.from_config`.

The Detector is the runner around one backend (`backends`): it decodes (one decoder, one set of limits), batches,
runs the forward and collects results. Decoding and resizing run in DataLoader workers, overlapped with the forward
pass; text features are computed once per class. A file that cannot be read becomes a failed `Prediction` with the
reason, and the batch goes on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch.utils.data import DataLoader, Dataset

from kanoclip.data.images import Crop, ImageLike, ImageLimits, crop_array, decode, source_name
from kanoclip.data.inputs import expand_inputs
from kanoclip.errors import ConfigError, KanoclipError
from kanoclip.inference import distributed
from kanoclip.inference.backends import CLASS_TEXT, Backend, TorchBackend, build_backend
from kanoclip.inference.config import RunConfig
from kanoclip.inference.defect_typing import (
    DefectExample,
    DefectTyper,
    MaskLike,
    TypedDefect,
    read_examples,
)
from kanoclip.inference.devices import die_with_parent
from kanoclip.inference.overlays import OverlayScale, check_scale, choose_scale, overlay, spread, with_colour_bar
from kanoclip.inference.thresholds import Thresholds, read_standalone
from kanoclip.model.config import KAnoCLIPConfig
from kanoclip.model.defect_typing import TypePrototypes
from kanoclip.model.kanoclip import KAnoCLIP
from kanoclip.model.references import ReferenceBank, encode_good_parts

NON_FINITE = (
    "the model gave a non-finite score or map (NaN or inf): its weights, checkpoint or reference bank are damaged"
)


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
    defect_type: str | None = None  # judged anomalous: its likeliest type, or "unknown" (`Detector.type_defects`)
    defect_type_p: float | None = None  # that type's probability


@dataclass
class Collected:
    """Scores (NaN where unreadable) and run-resolution float16 maps of a list of images, for metrics."""

    pred_scores: NDArray[np.float64]
    anomaly_maps: NDArray[np.float16]  # (N, S, S)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> NDArray[np.bool_]:
        return ~np.isnan(self.pred_scores)


@dataclass
class GoodParts:
    """Encoded good parts, not yet in a bank: features per tap level (M, D) and each image's path and sha256."""

    levels: list[torch.Tensor]
    sources: list[dict[str, str]]


def to_tensor(rgb: NDArray[np.uint8], size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float in [0, 1]; bicubic with antialias, as the model resizes."""
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255)
    if x.shape[1:] != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
    return x


class ImageFiles(Dataset[dict[str, Any]]):
    """Files (optionally cropped) decoded and resized in workers; read errors travel as data, not exceptions."""

    def __init__(
        self, items: Sequence[tuple[str | Path, Crop | None]], size: int, limits: ImageLimits, keep_image: bool = False
    ) -> None:
        self.items, self.size, self.limits, self.keep_image = list(items), size, limits, keep_image

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, crop = self.items[i]
        try:
            rgb = crop_array(decode(path, limits=self.limits), crop)
        except KanoclipError as e:
            return {"index": i, "error": str(e)}
        item: dict[str, Any] = {"index": i, "pixels": to_tensor(rgb, self.size), "hw": rgb.shape[:2]}
        if self.keep_image:
            item["image"] = rgb
        return item


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


class Detector:
    """A ready-to-run model: `Detector.from_config(RunConfig(...)).predict(image) -> (score, map)`.

    Training-free mode (no checkpoint) takes its text from the class name (`set_class`); few-shot references are
    added with `add_references`, swapped with `use_references` and dropped with `clear_references` (SPEC §9).
    """

    def __init__(self, backend: Backend, run: RunConfig) -> None:
        self.backend, self.run_config = backend, run
        self.batch_size, self.workers = run.batch_size, run.workers
        self.limits = ImageLimits(max_pixels=run.max_pixels)
        self.thresholds = backend.thresholds
        self.references: ReferenceBank | None = None
        self._text: torch.Tensor | None = None  # training-free text features (2, D); None: the learned prompts
        self._bank_levels: list[torch.Tensor] | None = None  # the bank on the backend's device
        self._class_text: dict[str, tuple[torch.Tensor, dict[str, Any]]] = {}
        self._spread: tuple[float, float] | None = None  # the maps' robust spread in the first batch (visualize)
        self.typer = DefectTyper(run) if run.defect_typing and isinstance(backend, TorchBackend) else None
        self.type_class = run.class_name or "object"  # whose types typing names (`set_class` follows the class)
        self.text_record: dict[str, Any] = (
            {"source": "learned prompts (checkpoint)"}
            if isinstance(backend, TorchBackend)
            else {**backend.manifest["text"], "baked_at_export": True}  # type: ignore[attr-defined]
        )

    @classmethod
    def from_config(cls, run: RunConfig | None = None, backend: Backend | None = None) -> Detector:
        """The one factory: the backend (or one already loaded for the same model, which detectors for several
        products share: `backend_key`), then the class text, thresholds and references the run asks for."""
        run = run or RunConfig()
        if run.references and run.engine == "torch":
            expand_inputs([r for r in run.references if not r.endswith(".kref")])  # a missing path fails first
        det = cls(backend or build_backend(run), run)
        if det.training_free:
            det.set_class(run.class_name or "object")
        if run.calibration:
            det.thresholds = read_standalone(run.calibration, det.config.to_dict())[0]
        if run.image_threshold is not None:  # the user's own number: no basis to check
            det.thresholds = Thresholds(run.image_threshold, det.thresholds.pixel_threshold)
        if len(run.references) == 1 and run.references[0].endswith(".kref"):
            det.use_references(ReferenceBank.load(run.references[0]))
        elif run.references:
            det.add_references(expand_inputs(run.references)[0])
        if run.defect_examples:
            det.use_defect_examples(det.encode_defect_examples(read_examples(run.defect_examples)))
        check_scale(run.overlay_scale, det.thresholds.pixel_threshold)
        return det

    # -- what runs -------------------------------------------------------------------------------------------------
    @property
    def config(self) -> KAnoCLIPConfig:
        return self.backend.config

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def checkpoint(self) -> Path | None:
        return self.backend.checkpoint if isinstance(self.backend, TorchBackend) else None

    @property
    def training_free(self) -> bool:
        return isinstance(self.backend, TorchBackend) and self.backend.checkpoint is None

    @property
    def model(self) -> KAnoCLIP:
        """The KAnoCLIP model (PyTorch engine only)."""
        return self._torch("the model").model

    def _torch(self, what: str) -> TorchBackend:
        if not isinstance(self.backend, TorchBackend):
            raise ConfigError(f"{what} needs the PyTorch engine: an exported model has it baked in; export again")
        return self.backend

    def supports(self, capability: str) -> bool:
        return capability in self.backend.supports

    # -- set-up ----------------------------------------------------------------------------------------------------
    def set_class(self, name: str) -> None:
        """Training-free mode: text features for this class (computed once per class); a checkpoint's learned
        prompts are class-agnostic, so there it only chooses the types defect typing names."""
        self.type_class = name
        if not self.training_free or not self.supports(CLASS_TEXT):
            return
        from kanoclip.knowledge import training_free_text

        backend = self._torch("set_class")
        if name not in self._class_text:
            self._class_text[name] = training_free_text(backend.model, name, strict=self.run_config.strict_class)
        self._text, self.text_record = self._class_text[name]
        self._apply()

    def use_references(self, bank: ReferenceBank | None) -> None:
        """Score against this bank from now on (None: zero-shot); a bank made for another model is refused."""
        backend = self._torch("references")
        if bank is not None:
            bank.check(backend.reference_identity())
            bank.check_shape(len(self.config.tap_layers or ()), backend.model.feature_dim)
        self._bank_levels = None if bank is None else backend.on_device(bank.levels)
        self.references = bank
        self._apply()

    def clear_references(self) -> None:
        self.use_references(None)

    def encode_references(self, images: Sequence[ImageLike]) -> GoodParts:
        """Good parts as features (decoded here, under the same limits; an unreadable one is an error: a reference
        must be trusted), augmented as `reference_augment` says. An image the bank already holds, or one given twice,
        is encoded once. This is the part of a bank update that runs the model: O(new images)."""
        backend = self._torch("add_references")
        held = {s["sha256"] for s in self.references.sources} if self.references else set()
        arrays, sources = [], []
        for image in images:
            rgb = decode(image, limits=self.limits)
            digest = _sha256(image, rgb)
            if digest not in held:
                held.add(digest)
                arrays.append(rgb)
                sources.append({"path": source_name(image), "sha256": digest})
        batches = (
            torch.stack([to_tensor(a, self.image_size) for a in arrays[start : start + self.batch_size]])
            for start in range(0, len(arrays), self.batch_size)
        )
        return GoodParts(encode_good_parts(batches, backend.reference_features, self.config.reference_augment), sources)

    def extended_bank(self, parts: GoodParts) -> ReferenceBank:
        """The current bank plus encoded good parts, reduced by coreset past `reference_max_patches`: CPU work that
        needs no model, so a server runs it beside the forward passes and then swaps the bank in whole."""
        bank = self.references or ReferenceBank([], self._torch("references").reference_identity())
        return bank.extended(parts.levels, parts.sources, self.config.reference_max_patches) if parts.sources else bank

    def add_references(self, images: Sequence[ImageLike]) -> ReferenceBank:
        """Good parts into the bank (SPEC §9): encoded, added (reduced past the limit) and used from now on."""
        bank = self.extended_bank(self.encode_references(images))
        self.use_references(bank)
        return bank

    def threshold_basis(self) -> dict[str, Any]:
        """What scores depend on besides the image: thresholds set on one basis do not fit another. Engines that
        compute in fp32 give the same scores (to 1e-4), so fp32 is one basis whatever the engine."""
        described = self.backend.describe()
        numerics = (
            ("fp32" if self.backend.dtype is None else str(self.backend.dtype).removeprefix("torch."))
            if isinstance(self.backend, TorchBackend)
            else f"{described['engine'].split()[0]} {described['precision']}".replace("onnxruntime fp32", "fp32")
        )
        if numerics == "openvino fp32":
            numerics = "fp32"
        bank = self.references.id if self.references else None
        if not isinstance(self.backend, TorchBackend):
            bank = (self.backend.manifest.get("references") or {}).get("id")  # type: ignore[attr-defined]
        return {
            "text": {k: self.text_record.get(k) for k in ("class", "source")},
            "references": bank,
            "numerics": numerics,
            "checkpoint_sha256": described["checkpoint_sha256"],
            "backbone_fingerprint": described["backbone_fingerprint"],
        }

    def stale_thresholds(self) -> str | None:
        """Why the thresholds do not fit this detector as it is now (another class text, bank or precision), if so."""
        return self.thresholds.stale(self.threshold_basis())

    def check_thresholds(self) -> None:
        """Refuse to label with thresholds set on something else: what detect and serve call before they label."""
        stale = self.stale_thresholds()
        if stale:
            raise ConfigError(
                f"the thresholds do not fit this run ({stale}): calibrate again with the same options "
                "(`kanoclip calibrate ... --reference ...`), or give --threshold"
            )

    def describe(self) -> dict[str, Any]:
        """What produced the outputs, written beside them: model, resolved config, text, thresholds, precision."""
        described = self.backend.describe()
        references = self.references.describe() if self.references else None
        if not isinstance(self.backend, TorchBackend):
            references = self.backend.manifest.get("references")  # type: ignore[attr-defined]
        return {
            **described,
            "text": self.text_record,
            "thresholds": self.thresholds.to_dict(),
            "random_weights": self.config.pretrained == "none",
            "references": references,
            "defect_typing": self.typing_record(),
            "overlay_scale": self.overlay_record(),
            "run": self.run_config.settings(),
            "user_set": self.user_set(),
        }

    def user_set(self) -> list[str]:
        """The settings the user chose (flags, a config file, or the API's model changes), as `describe()` names
        them: the report marks these, never values the code derived (resolved taps, quick_gelu)."""
        run = self.run_config
        return sorted({*(f"run.{name}" for name in run.user_set), *(f"config.{name}" for name, _ in run.model_changes)})

    def _apply(self) -> None:
        """Condition the (possibly shared) model with this detector's text and bank, and say so: a detector
        whose backend another detector conditioned since re-applies its own before its next forward. Callers that
        share a backend run set-up and forwards on one thread (serve's forward thread)."""
        backend = self.backend
        if isinstance(backend, TorchBackend):
            backend.setup(text=self._text, bank=self._bank_levels)
            backend.owner = self

    # -- defect typing (issue #34; the work is `DefectTyper`'s) ---------------------------------------------------
    @property
    def defect_examples(self) -> TypePrototypes | None:
        """The labelled examples typing uses now (None: text only)."""
        return self.typer.examples if self.typer is not None else None

    def typing_record(self) -> dict[str, Any] | None:
        """What typing runs with (run.json's `defect_typing`); None: nothing typed (no threshold, off, export)."""
        if self.typer is None or self.thresholds.image_threshold is None:
            return None
        return self.typer.describe(self.type_class)

    def use_defect_examples(self, examples: TypePrototypes | None) -> None:
        """Type with these examples from now on (None: text only); examples of another model are refused."""
        self._typing("defect examples").use(self, examples)

    def encode_defect_examples(self, examples: Sequence[DefectExample]) -> TypePrototypes:
        """The current examples plus these, encoded (the part that runs the model), not yet used."""
        return self._typing("defect examples").encode(self, examples)

    def add_defect_example(self, image: ImageLike, type: str, mask: MaskLike | None = None) -> TypePrototypes:
        """One labelled defect (a typed verdict) into the examples, used from now on; returns them, to be kept."""
        self.use_defect_examples(examples := self.encode_defect_examples([DefectExample(image, type, mask)]))
        return examples

    def type_defects(
        self,
        images: Sequence[ImageLike],
        maps: Sequence[NDArray[np.floating]] | None = None,
        types: Sequence[str] | None = None,
    ) -> list[TypedDefect]:
        """Type these images whatever their score (evaluate types every truly anomalous image): each region weighted
        by its map (any size; None: this detector's own maps), among `types` (None: the run's list for the class)."""
        return self._typing("type_defects").type_images(self, images, maps, types)

    def _typing(self, what: str) -> DefectTyper:
        if self.typer is None:
            raise ConfigError(f"{what} needs defect typing: the PyTorch engine, without --no-defect-typing")
        return self.typer

    def map_levels(self) -> list[int]:
        """The tap levels this detector's maps fuse (its own text applied first, on a shared model)."""
        if self._torch("defect typing").owner is not self:
            self._apply()
        return self.model.map_levels()

    # -- overlays ---------------------------------------------------------------------------------------------------
    @property
    def overlay_scale(self) -> OverlayScale:
        """The colour scale of this detector's overlays (`visualize`): its ends are fixed by the first batch it ran,
        or by `resume_overlay_scale`, and follow the pixel threshold in `threshold` mode."""
        return choose_scale(self.run_config.overlay_scale, self._spread, self.thresholds.pixel_threshold)

    def overlay_record(self) -> dict[str, Any]:
        """The scale as `run.json` records it, with the spread it came from, so a resumed run keeps it."""
        return {**self.overlay_scale.to_dict(), "spread": None if self._spread is None else list(self._spread)}

    @property
    def overlay_scale_fitted(self) -> bool:
        """Whether the scale's ends are settled (a `fixed` scale always is)."""
        return self._spread is not None or self.run_config.overlay_scale == "fixed"

    def resume_overlay_scale(self, record: dict[str, Any] | None) -> None:
        """Take the spread a run recorded (`overlay_record`) instead of fitting one on this process's first batch."""
        if record and record.get("spread"):
            lo, hi = record["spread"]
            self._spread = float(lo), float(hi)

    def fit_overlay_scale(self, images: Sequence[ImageLike]) -> None:
        """Fix the scale from these images' maps (the run's first batch) before anything else runs: what each Ray
        actor does so that all of them paint on the scale a local run would have."""
        if not self.overlay_scale_fitted and images:
            self.predict_many(images)

    def paint(self, rgb: NDArray[np.uint8], p: Prediction) -> NDArray[np.uint8]:
        """The overlay people see: the map on the image on the run's scale, the predicted mask outlined, and the
        colour bar that names the scale's ends and threshold."""
        assert p.anomaly_map is not None
        scale = self.overlay_scale
        return with_colour_bar(overlay(rgb, p.anomaly_map, scale, mask=p.pred_mask), scale)

    # -- running ---------------------------------------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) in [0, 1] at the run size -> pred_score (B,) and anomaly_map (B, S, S), float32 on the CPU.
        The first batch also fixes the overlay scale's spread."""
        scores, maps = self.raw_forward(pixels)
        if not self.overlay_scale_fitted:
            self._spread = spread(maps.numpy())
        return scores, maps

    def raw_forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backend's forward on this detector's text and bank, touching no run state (the overlay scale)."""
        if isinstance(self.backend, TorchBackend) and self.backend.owner is not self:
            self._apply()
        return self.backend.forward(pixels)

    def predict(self, image: ImageLike) -> tuple[float, NDArray[np.float32]]:
        """One image (array (H, W, 3) uint8, PIL image, path or encoded bytes) -> (score, map at its own size)."""
        p = self.predict_many([image])[0]
        if p.error is not None or p.pred_score is None or p.anomaly_map is None:
            raise KanoclipError(p.error or "no prediction")
        return p.pred_score, p.anomaly_map

    def predict_many(self, images: Sequence[ImageLike]) -> list[Prediction]:
        """Images decoded here, run as one batch; maps at each image's own size."""
        arrays = [decode(image, limits=self.limits) for image in images]
        pixels = torch.stack([to_tensor(a, self.image_size) for a in arrays])
        scores, maps = self.forward(pixels)
        typed = self.typer.judged(self, pixels, scores, maps) if self.typer else [None] * len(scores)
        return [
            self._prediction(source_name(image), float(s), _resize_map(m, a.shape[:2]), typed=t)
            for image, s, m, a, t in zip(images, scores, maps, arrays, typed, strict=True)
        ]

    def _prediction(
        self,
        source: str,
        score: float,
        amap: NDArray[np.float32],
        image: NDArray[np.uint8] | None = None,
        typed: TypedDefect | None = None,
    ) -> Prediction:
        if not (np.isfinite(score) and np.isfinite(amap).all()):  # never a label: NaN >= t is False, i.e. "normal"
            return Prediction(source, error=f"{source}: {NON_FINITE}")
        t = self.thresholds
        label = None if t.image_threshold is None else int(score >= t.image_threshold)
        mask = None if t.pixel_threshold is None else amap >= t.pixel_threshold
        p = Prediction(source, score, amap, label, mask, image)
        if typed is not None and label == 1:
            p.defect_type, p.defect_type_p = typed.type, typed.p
        return p

    def run(
        self,
        items: Sequence[str | Path | tuple[str | Path, Crop | None]],
        own_size: bool = True,
        keep_image: bool = False,
        progress: Any = None,
        typing: bool = True,
    ) -> Iterator[Prediction]:
        """Files through the DataLoader, in order; maps at their own size or the run size; typed unless `typing` off."""
        pairs = [item if isinstance(item, tuple) else (item, None) for item in items]
        loader = DataLoader(
            ImageFiles(pairs, self.image_size, self.limits, keep_image),
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
                scores, maps = self.forward(pixels := torch.stack([b["pixels"] for b in good]))
                typed = self.typer.judged(self, pixels, scores, maps) if self.typer and typing else [None] * len(scores)
                for b, s, m, kind in zip(good, scores, maps, typed, strict=True):
                    amap = _resize_map(m, b["hw"]) if own_size else m.numpy()
                    source = str(pairs[b["index"]][0])
                    results[b["index"]] = self._prediction(source, float(s), amap, b.get("image"), kind)
            for b in batch:
                yield results[b["index"]]
            if progress is not None:
                progress.update(len(batch))

    def collect(self, items: Sequence[tuple[str | Path, Crop | None]], progress: Any = None) -> Collected | None:
        """Scores and run-resolution maps (float16) of many images, for metrics and thresholds (untyped); memory is one
        float16 map per image. Under `torchrun` each rank runs its whole batches (`shard_batches`) and rank 0 gets
        everything, in order, exactly as one process would have computed it; other ranks get None."""
        place = distributed.current()
        mine = distributed.shard_batches(len(items), self.batch_size, place)
        size = self.image_size
        out = Collected(np.full(len(mine), np.nan), np.zeros((len(mine), size, size), dtype=np.float16))
        for i, p in enumerate(self.run([items[j] for j in mine], own_size=False, progress=progress, typing=False)):
            if p.error is not None or p.pred_score is None:
                out.failed.append(p.error or "unknown error")
                continue
            out.pred_scores[i], out.anomaly_maps[i] = p.pred_score, p.anomaly_map
        if place.world == 1:
            return out
        parts = distributed.gather_to_main((mine, out), place)
        if parts is None:
            return None
        merged = Collected(np.full(len(items), np.nan), np.zeros((len(items), size, size), dtype=np.float16))
        for indices, part in parts:
            merged.pred_scores[indices], merged.anomaly_maps[indices] = part.pred_scores, part.anomaly_maps
            merged.failed += part.failed
        return merged


def _sha256(image: ImageLike, rgb: NDArray[np.uint8]) -> str:
    """The file's bytes for paths and encoded bytes, else the decoded pixels."""
    if isinstance(image, str | Path):
        return hashlib.sha256(Path(image).read_bytes()).hexdigest()
    return hashlib.sha256(image if isinstance(image, bytes) else rgb.tobytes()).hexdigest()


def _resize_map(amap: torch.Tensor, hw: tuple[int, int]) -> NDArray[np.float32]:
    if tuple(amap.shape) != tuple(hw):
        amap = F.interpolate(amap[None, None], size=tuple(hw), mode="bilinear", align_corners=False)[0, 0]
    return amap.numpy().astype(np.float32, copy=False)
