"""How a detector runs (the inference layer's config): which model, engine, device, product, references, thresholds
and limits. `Detector.from_config` is the only way anything builds a detector from one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kanoclip.errors import ConfigError
from kanoclip.model import hub
from kanoclip.model.config import OVERLAY_SCALES, PRECISIONS, KAnoCLIPConfig, _one_of, _positive
from kanoclip.options import option

ENGINES = ("torch", "onnxruntime", "openvino")
CHECKPOINT_CHANGES = ("backbone", "pretrained", "image_size")  # where a checkpoint's frozen CLIP may be found
TYPING = "defect typing"
UNKNOWN_TYPE = "unknown"  # the type named below --type-min-p: never a type's own name
MAX_TYPE_NAME = 100


def check_type_name(name: str, where: str = "a defect type") -> str:
    """A type name as given, stripped; refused when empty, reserved, too long or holding control characters."""
    text = name.strip()
    if not text or text.lower() == UNKNOWN_TYPE or len(text) > MAX_TYPE_NAME or any(ord(c) < 32 for c in text):
        raise ConfigError(
            f"{where} {name!r} cannot name a type: give 1 to {MAX_TYPE_NAME} printable characters, not "
            f"{UNKNOWN_TYPE!r} (what --type-min-p names an unsure type)"
        )
    return text


def _flag(field: str) -> str:
    """The flag that sets a config field: its own for the backbone options, else --set."""
    return f"--{field.replace('_', '-')}" if field in CHECKPOINT_CHANGES else f"--set {field}"


@dataclass(frozen=True)
class RunConfig:
    """How a detector runs: which model, where, how fast, for which product, with which references, thresholds and
    limits. The CLI turns flags into one of these; `Detector.from_config` is the only way anything builds a
    detector from it (CLI, Ray actors, serve, reproduce, benchmarks).

    The model is a checkpoint (a folder or `hf://ORG/NAME[@REV]`, found by `checkpoint.locate`), training-free mode
    (`model_file` and `model_changes` on the default `KAnoCLIPConfig`), or, with an `engine` other than torch, a
    folder written by `kanoclip export` (`exported`).
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
    checkpoint: str | None = option(
        None,
        metavar="DIR|hf://ORG/NAME[@REV]",
        help="a folder written by `kanoclip train`, or a model on the Hugging Face Hub (`kanoclip push` publishes "
        "one; fetched into its cache, which HF_HUB_OFFLINE=1 runs from; `kanoclip pull` fetches ahead). Without "
        "it: training-free",
    )
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
    # Defect typing (issue #34; `inference.defect_typing`): images judged anomalous get a defect_type.
    defect_typing: bool = option(
        True,
        name="--no-defect-typing",
        negate=True,
        help="do not name the defect type of images judged anomalous (typing costs one more CLIP-VV pass for each)",
        group=TYPING,
    )
    defect_types: tuple[str, ...] = option(
        (),
        metavar="A,B,...",
        help="the defect types to name, replacing the class's shipped ones (e.g. scratch,dent; a free-text type's "
        "text is built from its own words); types with --defect-examples are added",
        group=TYPING,
    )
    defect_examples: str | None = option(
        None,
        metavar="DIR",
        help="labelled defects for few-shot typing: DIR/<type>/*.png; a mask NAME_mask.png beside an image marks "
        "its defect (else the image's anomaly map weighs its patches); each type's examples make its prototype",
        group=TYPING,
    )
    type_temperature: float = option(
        0.01,
        help="tau of the softmax over types of cos(region, type) / tau, for text and examples alike (0.01: CLIP's "
        "own logit scale, 100)",
        group=TYPING,
    )
    type_example_weight: float = option(
        0.5,
        help="w, the examples' share: p = (1 - w) * p_text + w * p_examples (0: text only, 1: examples only; "
        "without examples p = p_text)",
        group=TYPING,
    )
    type_min_p: float = option(
        0.0,
        help="name the type 'unknown' when its probability is below this (0: always the likeliest type)",
        group=TYPING,
    )

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
        self._validate_typing()
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        changed = [name for name, _ in self.model_changes]
        unknown = sorted(set(changed) - set(KAnoCLIPConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; see `kanoclip info` for all fields")
        banks = [r for r in self.references if r.endswith(".kref")]
        if banks and len(self.references) > 1:
            raise ConfigError("--reference takes one bank file (.kref), or images/folders/globs, not both")
        if hub.is_hub_name(self.checkpoint):
            hub.parse(str(self.checkpoint))  # a malformed name fails here, before anything is loaded
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

    def type_names(self) -> list[str]:
        """--defect-types as a list: comma-separated and repeatable, each name checked, repeats dropped."""
        names = [
            check_type_name(n, "--defect-types") for item in self.defect_types for n in item.split(",") if n.strip()
        ]
        return list(dict.fromkeys(names))

    def _validate_typing(self) -> None:
        if self.type_temperature <= 0:
            raise ConfigError(f"--type-temperature must be > 0, got {self.type_temperature}")
        for flag, value in (("--type-example-weight", self.type_example_weight), ("--type-min-p", self.type_min_p)):
            if not 0 <= value <= 1:
                raise ConfigError(f"{flag} must lie in [0, 1], got {value}")
        self.type_names()
        asked = [
            f for f, on in (("--defect-types", self.defect_types), ("--defect-examples", self.defect_examples)) if on
        ]
        if asked and (self.engine != "torch" or not self.defect_typing):
            why = "typing needs the PyTorch engine" if self.engine != "torch" else "--no-defect-typing turns typing off"
            raise ConfigError(f"{', '.join(asked)} cannot be used here: {why}")

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
