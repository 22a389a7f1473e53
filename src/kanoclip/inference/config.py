"""How a detector runs (the inference layer's config): which model, engine, device, product, references, thresholds
and limits. `Detector.from_config` is the only way anything builds a detector from one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kanoclip.errors import ConfigError
from kanoclip.model.config import OVERLAY_SCALES, PRECISIONS, KAnoCLIPConfig, _one_of, _positive

ENGINES = ("torch", "onnxruntime", "openvino")
CHECKPOINT_CHANGES = ("backbone", "pretrained", "image_size")  # where a checkpoint's frozen CLIP may be found


def _flag(field: str) -> str:
    """The flag that sets a config field: its own for the backbone options, else --set."""
    return f"--{field.replace('_', '-')}" if field in CHECKPOINT_CHANGES else f"--set {field}"


@dataclass(frozen=True)
class RunConfig:
    """How a detector runs: which model, where, how fast, for which product, with which references, thresholds and
    limits. The CLI turns flags into one of these; `Detector.from_config` is the only way anything builds a
    detector from it (CLI, Ray actors, serve, reproduce, benchmarks).

    The model is a checkpoint folder, training-free mode (`model_file` and `model_changes` on the default
    `KAnoCLIPConfig`), or, with an `engine` other than torch, a folder written by `kanoclip export` (`exported`).
    Fields left at None were not asked for; `validate` refuses the ones that do not apply to the chosen engine."""

    engine: str = "torch"
    exported: str | None = None  # the folder from `kanoclip export`, run by onnxruntime / openvino
    checkpoint: str | None = None
    model_file: str | None = None  # a KAnoCLIPConfig JSON to start from (training-free)
    model_changes: tuple[tuple[str, Any], ...] = ()  # config fields set by flags, in order
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    workers: int = 2
    compile: bool = False
    class_name: str | None = None  # training-free text; None: the class-agnostic "object"
    references: tuple[str, ...] = ()  # images, folders, globs, or one bank file (.kref)
    calibration: str | None = None  # a standalone calibration file (training-free)
    image_threshold: float | None = None  # replaces the calibrated image threshold
    max_pixels: int = 50_000_000  # per decoded image, everywhere
    overlay_scale: str = "auto"  # the overlays' colour scale: auto | fixed | run | threshold (visualize)

    @classmethod
    def with_model(cls, config: KAnoCLIPConfig, **fields: Any) -> RunConfig:
        """Training-free on a whole model config (the Python API's way to name one), with these run fields."""
        return cls(model_changes=tuple(config.to_dict().items()), **fields)

    def __post_init__(self) -> None:
        self.validate()

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Refuse options that cannot apply, saying why, rather than ignore them."""
        _one_of("engine", self.engine, ENGINES)
        _one_of("precision", self.precision, (*PRECISIONS, "int8"))
        _positive("batch_size", self.batch_size)
        _positive("max_pixels", self.max_pixels)
        _one_of("overlay_scale", self.overlay_scale, OVERLAY_SCALES)
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        changed = [name for name, _ in self.model_changes]
        unknown = sorted(set(changed) - set(KAnoCLIPConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; see `kanoclip info` for all fields")
        banks = [r for r in self.references if r.endswith(".kref")]
        if banks and len(self.references) > 1:
            raise ConfigError("--reference takes one bank file (.kref), or images/folders/globs, not both")
        if self.engine == "torch":
            if self.exported is not None:
                raise ConfigError("--exported runs a folder from `kanoclip export`: add --engine onnxruntime|openvino")
            if self.checkpoint is not None:
                self._refuse(
                    [_flag(f) for f in changed if f not in CHECKPOINT_CHANGES]
                    + (["--config"] if self.model_file else []),
                    "a checkpoint keeps its own config (only --backbone, --pretrained and --image-size may point "
                    "elsewhere)",
                )
            return
        if self.exported is None:
            raise ConfigError(
                f"--engine {self.engine} runs an exported folder: pass --exported DIR (from `kanoclip export`)"
            )
        given = {
            "--checkpoint": self.checkpoint is not None,
            "--config": self.model_file is not None,
            "--class-name": self.class_name is not None,
            "--reference": bool(self.references),
            "--device": self.device != "auto",
            "--precision": self.precision not in ("auto", "fp32"),
            "--compile": self.compile,
        }
        flags = [flag for flag, on in given.items() if on]
        flags += [_flag(f) for f in changed]
        self._refuse(
            [f for f in flags if f != "--image-size"],
            f"an exported folder has its model, class text, references and precision baked in and runs on the CPU "
            f"(--engine {self.engine}); export again with those options instead",
        )

    @staticmethod
    def _refuse(flags: list[str], why: str) -> None:
        if flags:
            raise ConfigError(f"{', '.join(dict.fromkeys(flags))} cannot be used here: {why}")

    def model_config(self) -> KAnoCLIPConfig:
        """Training-free: the config file (or the defaults) with the flags' changes applied."""
        base = KAnoCLIPConfig.from_json(self.model_file) if self.model_file else KAnoCLIPConfig()
        return base.replace(**dict(self.model_changes))
