"""Every choice of the method in one place (KANOCLIP_SPEC.md §8): the defaults are the spec's [INFERRED] choices.

`KAnoCLIPConfig` describes the model and its losses; it is saved beside every checkpoint so that a checkpoint
rebuilds exactly. `TrainConfig` describes one training run (§4).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kanoclip.errors import ConfigError
from kanoclip.options import option

T = TypeVar("T", bound="_JsonConfig")

OVERLAY_SCALES = ("auto", "fixed", "run", "threshold")  # see visualize
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 (fp16 on older GPUs) autocast on a GPU, fp32 on a CPU


class _JsonConfig:
    """JSON round-trip shared by the config dataclasses; unknown keys are an error, not silently dropped."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(names)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        config = cls(**values)
        config._check_types()
        config.validate()
        return config

    @classmethod
    def from_json(cls: type[T], path: str | Path) -> T:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"config file {path} does not exist") from e
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from e
        return cls.from_dict(data)

    def replace(self: T, **changes: Any) -> T:
        config = dataclasses.replace(self, **changes)  # type: ignore[type-var]
        config._check_types()
        config.validate()
        return config

    def _check_types(self) -> None:
        """Each field holds a value of its declared kind: a hand-edited `"image_size": "big"` is a clear error, not a
        TypeError deep inside the model."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value, declared = getattr(self, f.name), str(f.type)
            if _fits(value, declared):
                continue
            raise ConfigError(f"{f.name} must be {declared.replace(' | None', ' or null')}, got {value!r}")

    def validate(self) -> None:
        raise NotImplementedError


def _fits(value: Any, declared: str) -> bool:
    """Whether a value fits a field's annotation (the few kinds config fields use)."""
    if value is None:
        return "None" in declared
    if declared.startswith("tuple"):
        kind = float if "float" in declared else int
        return isinstance(value, tuple) and all(_fits(v, kind.__name__) for v in value)
    if isinstance(value, bool):
        return "bool" in declared
    if "float" in declared:
        return isinstance(value, int | float)
    if "int" in declared:
        return isinstance(value, int)
    if "str" in declared:
        return isinstance(value, str)
    return True


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


@dataclass
class KAnoCLIPConfig(_JsonConfig):
    """The model: backbone, CLIP-VV, prompts, Bi-CMCI, Conv-Adapter, scoring and losses (SPEC §3, §8)."""

    # Backbone (I1). `pretrained`: an open_clip tag, a local checkpoint file, or "none" for random weights.
    backbone: str = option("ViT-L-14-336", help="open_clip model name or model-config .json", group="model")
    pretrained: str = option(
        "openai",
        help="open_clip tag (downloaded once), a local weights file (e.g. /models/ViT-L-14-336px.pt), or 'none' for "
        "random weights (smoke runs: the outputs then measure the pipeline, not the method)",
        group="model",
    )
    image_size: int = option(518, help="run resolution in pixels", group="model")
    pos_embed_interpolation: str = "bilinear"
    quick_gelu: bool | None = None  # None: resolved from the weights' origin at load, then recorded here
    random_seed: int = 0  # pretrained="none" only: the seed of the random weights, so checkpoints rebuild exactly

    # CLIP-VV (I2-I4). Layers are 1-based; None resolves to the quarter points of the tower (6, 12, 18, 24 on ViT-L).
    vv_start_layer: int | None = None
    tap_layers: tuple[int, ...] | None = None
    tap_mode: str = "distinct"  # "top": AnomalyCLIP-compatible, the last tap repeated at every level
    global_ln_post: bool = True  # False: AnomalyCLIP's quirk of projecting the CLS token without ln_post

    # KnPL prompt learner (I5).
    n_ctx: int = 12
    prompt_depth: int = 9
    deep_prompt_length: int = 4
    class_word: str = "object"
    abnormal_word: str = "damaged"  # "" drops it: the two prompts then differ only in their learned tokens

    # Bi-CMCI (I8).
    bi_cmci_heads: int = 8
    bi_cmci_shared: bool = False

    # Conv-Adapter (I9).
    adapter: str = "conv2d"  # "conv1d": the cheaper bottleneck on the global vector alone
    adapter_reduction: int = 4
    adapter_ratio: float = 0.2

    # Training-free mode (no checkpoint; README "Configuration"). Maps from the deep V-V taps only: the shallow taps
    # are aligned to text only by training. None resolves to the taps at or past 3/4 of the tower (18, 24 on ViT-L).
    training_free_taps: tuple[int, ...] | None = None
    training_free_text: str = "knowledge+ensemble"  # or "knowledge" (class sentences), "ensemble" (WinCLIP-style)

    # Few-shot normal references (SPEC §9, I20; README "Few-shot references"). Final map =
    # (zero-shot + weight * reference) / (1 + weight): the spec's sum, scaled to stay in [0, 1] (no metric changes).
    reference_weight: float = 1.0
    reference_score: str = "mean"  # "mean": (zero-shot score + max of the reference map) / 2; "zero-shot": unchanged
    reference_augment: str = "none"  # "rot90": the references also at 90/180/270 degrees; "rot90+flip": x8
    reference_max_patches: int = 20_000  # per level; past it, PatchCore's greedy coreset (0: no limit)
    reference_chunk: int = 2048  # bank rows per block of the nearest-neighbour search (memory: query x chunk)

    # Scoring (I10-I12).
    temperature: float = 0.07
    map_sigma: float = 4.0
    level_fusion: str = "mean"  # "sum" as AnomalyCLIP; no metric changes, "mean" keeps maps in [0, 1]
    score_mode: str = "global"  # "global+map": (p_global + max(map)) / 2

    # Losses (I7, I13): total = alpha * KD + beta * global + gamma * local.
    kd_mode: str = "cos"
    kd_use_vqa: bool = option(
        True,
        name="--general-knowledge-only",
        negate=True,
        help="KD on general knowledge only, no per-image VQA knowledge (sets kd_use_vqa=false)",
        group="model",
    )
    kd_temperature: float = 0.07
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    focal_gamma: float = 2.0

    def validate(self) -> None:
        _positive("image_size", self.image_size)
        _one_of("pos_embed_interpolation", self.pos_embed_interpolation, ("bilinear", "bicubic", "nearest"))
        _one_of("tap_mode", self.tap_mode, ("distinct", "top"))
        _one_of("adapter", self.adapter, ("conv2d", "conv1d"))
        _one_of("level_fusion", self.level_fusion, ("mean", "sum"))
        _one_of("score_mode", self.score_mode, ("global", "global+map"))
        _one_of("kd_mode", self.kd_mode, ("cos", "l2", "contrastive", "cos+contrastive"))
        _one_of("training_free_text", self.training_free_text, ("knowledge+ensemble", "knowledge", "ensemble"))
        _one_of("reference_score", self.reference_score, ("mean", "zero-shot"))
        _one_of("reference_augment", self.reference_augment, ("none", "rot90", "rot90+flip"))
        if self.reference_max_patches < 0:
            raise ConfigError(f"reference_max_patches must be >= 0, got {self.reference_max_patches}")
        for name in (
            "n_ctx",
            "prompt_depth",
            "deep_prompt_length",
            "bi_cmci_heads",
            "adapter_reduction",
            "temperature",
            "kd_temperature",
            "reference_chunk",
        ):
            _positive(name, getattr(self, name))
        for name in ("adapter_ratio", "map_sigma", "alpha", "beta", "gamma", "focal_gamma", "reference_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.tap_layers is not None:
            if not self.tap_layers:
                raise ConfigError("tap_layers must name at least one layer")
            if list(self.tap_layers) != sorted(set(self.tap_layers)):
                raise ConfigError(f"tap_layers must be increasing and distinct, got {self.tap_layers}")

    def resolve(self, vision_layers: int, text_layers: int) -> KAnoCLIPConfig:
        """Fill the layer choices left to the backbone and check them against its depth."""
        quarter = max(1, vision_layers // 4)
        start = self.vv_start_layer if self.vv_start_layer is not None else quarter
        taps = (
            self.tap_layers
            if self.tap_layers is not None
            else tuple(sorted({max(start, round(vision_layers * k / 4)) for k in (1, 2, 3, 4)}))
        )
        if not 1 <= start <= vision_layers:
            raise ConfigError(f"vv_start_layer={start} is outside the backbone's 1..{vision_layers} layers")
        if taps[0] < start or taps[-1] > vision_layers:
            raise ConfigError(
                f"tap_layers={taps} must lie between vv_start_layer={start} and the last layer {vision_layers}: "
                "taps are read from the V-V path"
            )
        deep = (
            self.training_free_taps
            if self.training_free_taps is not None
            else tuple(t for t in taps if 4 * t >= 3 * vision_layers) or taps[-1:]
        )
        if not deep or not set(deep) <= set(taps):
            raise ConfigError(f"training_free_taps={deep} must be a non-empty subset of tap_layers={taps}")
        if self.prompt_depth > text_layers:
            raise ConfigError(
                f"prompt_depth={self.prompt_depth} exceeds the text tower's {text_layers} layers; "
                f"set prompt_depth <= {text_layers}"
            )
        return self.replace(vv_start_layer=start, tap_layers=tuple(taps), training_free_taps=tuple(sorted(deep)))


@dataclass
class TrainConfig(_JsonConfig):
    """One training run on an auxiliary dataset (SPEC §4, I14)."""

    epochs: int = option(15, help="passes over the auxiliary data")
    batch_size: int = option(8, help="global, over all processes")
    lr_prompts: float = option(1e-3, help="learning rate of the prompts")
    lr_modules: float = option(1e-4, help="learning rate of Bi-CMCI and the Conv-Adapter")
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = option(111, help="seed of the data order and initialisation")
    precision: str = option(
        "fp32", choices=PRECISIONS, help="fp32 as the reference implementations; auto: bf16 autocast on GPU"
    )
    num_workers: int = option(2, name="--workers", help="data-loading processes")
    checkpoint_every: int = option(50, help="steps between resumable states (one is also written at each epoch end)")
    max_steps: int | None = option(None, help="stop after this many steps (smoke runs)")

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "lr_prompts", "lr_modules", "checkpoint_every"):
            _positive(name, getattr(self, name))
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        _one_of("precision", self.precision, PRECISIONS)
        if self.max_steps is not None:
            _positive("max_steps", self.max_steps)
