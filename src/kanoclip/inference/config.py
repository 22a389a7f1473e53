"""How a detector runs (the inference layer's config): which model, engine, device, product, references, thresholds
and limits. `Detector.from_config` is the only way anything builds a detector from one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kanoclip.errors import ConfigError
from kanoclip.model.config import OVERLAY_SCALES, PRECISIONS, KAnoCLIPConfig, _one_of, _positive
from kanoclip.options import option

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

    engine: str = option(
        "torch",
        choices=ENGINES,
        help="torch runs the model; onnxruntime / openvino run a folder from `kanoclip export` (--exported) on the "
        "CPU, with its model, text, references and precision baked in",
    )
    exported: str | None = option(
        None,
        old=("--model",),
        metavar="DIR",
        help="with --engine onnxruntime|openvino: the folder `kanoclip export` wrote",
    )
    checkpoint: str | None = option(None, metavar="DIR", help="a folder written by `kanoclip train` (or training-free)")
    model_file: str | None = option(
        None,
        name="--preset",
        metavar="NAME|JSON",
        help="the model config to start from: a preset (`kanoclip models`) or a KAnoCLIPConfig JSON file "
        "(training-free; --backbone, --set ... change it)",
        group="model",
    )
    model_changes: tuple[tuple[str, Any], ...] = ()  # config fields set by flags, in order
    device: str = option("auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    precision: str = option("auto", choices=PRECISIONS, help="auto: bf16 autocast on a GPU, fp32 on a CPU")
    batch_size: int = option(8, help="images per forward pass")
    workers: int = option(2, help="image-decoding processes (0: in the main process)")
    compile: bool = option(False, help="torch.compile the model (GPU; slow first batch)")
    class_name: str | None = option(
        None,
        old=("--knowledge-class",),
        help="training-free mode: what the images show (e.g. bottle, screw, pcb, 'brain mri'); its text comes from "
        "the shipped knowledge base and a prompt ensemble (default: the generic 'object')",
    )
    strict_class: bool = option(
        False, help="an unknown --class-name is an error instead of a warning that the generic text is used"
    )
    references: tuple[str, ...] = option(
        (),
        name="--reference",
        metavar="PATH",
        help="good parts as few-shot references: images, folders, quoted globs, or a bank file from "
        "`kanoclip reference build` (.kref); repeat the flag for more",
    )
    calibration: str | None = option(
        None, metavar="FILE", help="training-free mode: thresholds from `kanoclip calibrate` (a checkpoint has its own)"
    )
    image_threshold: float | None = option(
        None,
        name="--threshold",
        help="label images with score >= T as anomalous; default: the calibrated threshold, if any",
    )
    max_pixels: int = option(50_000_000, help="refuse images over this many pixels, before decoding them")
    overlay_scale: str = option(
        "auto",
        choices=OVERLAY_SCALES,
        help="the overlays' colour scale: threshold (the pixel threshold at the middle), run (the first batch's "
        "1st..99th percentiles, fixed for the run), fixed (0..1); auto: threshold when calibrated, else run. "
        "Recorded in run.json; each overlay carries its colour bar",
    )
    trust_torchscript: bool = option(
        False,
        help="load a TorchScript --pretrained file that is not one of OpenAI's releases (it runs the code inside it)",
        group="model",
    )
    user_set: tuple[str, ...] = ()  # the settings the user chose (flags, config file), recorded in run.json

    @classmethod
    def with_model(cls, config: KAnoCLIPConfig, **fields: Any) -> RunConfig:
        """Training-free on a whole model config (the Python API's way to name one), with these run fields."""
        default = KAnoCLIPConfig().to_dict()
        changes = tuple((k, v) for k, v in config.to_dict().items() if v != default[k])
        return cls(model_changes=changes, **fields)

    def __post_init__(self) -> None:
        self.validate()

    def settings(self) -> dict[str, Any]:
        """The run's values in effect, as `run.json` records them (the model's are under `config`)."""
        skip = ("model_changes", "user_set")
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

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
                    + (["--preset"] if self.model_file else []),
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
            "--preset": self.model_file is not None,
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
        if self.model_file is None:
            base = KAnoCLIPConfig()
        elif self.model_file.endswith(".json") or Path(self.model_file).exists():
            base = KAnoCLIPConfig.from_json(self.model_file)
        else:
            from kanoclip.model.presets import preset

            base = preset(self.model_file)
        return base.replace(**dict(self.model_changes))
