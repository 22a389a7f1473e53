"""`kanoclip export`: one ONNX or OpenVINO graph for CPUs and edge boxes (SPEC §10)."""

from __future__ import annotations

from dataclasses import dataclass

from kanoclip.cli.common import MODEL, detector, run_section
from kanoclip.cli.flags import Command, Parsed, Section
from kanoclip.inference.config import RunConfig
from kanoclip.options import option


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    format: str = option("onnx", choices=("onnx", "openvino"), help="the graph's format")
    calibration_images: tuple[str, ...] = option(
        (), metavar="PATH", nargs="+", help="int8: images to quantise on (your own): files, folders, globs"
    )
    out: str = option(metavar="DIR", help="the folder to write (model + manifest.json)")


def export(parsed: Parsed) -> int:
    from kanoclip.data.inputs import expand_inputs
    from kanoclip.inference.export import export

    o = parsed.get(ExportOptions)
    calibration = expand_inputs(list(o.calibration_images))[0] if o.calibration_images else []
    precision = parsed.get(RunConfig).precision  # the graph is traced in fp32, then converted to this
    folder = export(detector(parsed, precision="fp32"), o.out, o.format, precision, calibration)
    print(f"exported -> {folder} (manifest.json says what it holds)")
    engine = "openvino" if o.format == "openvino" else "onnxruntime"
    print(f"run it: kanoclip detect IMAGES --engine {engine} --exported {folder}")
    return 0


EPILOG = """examples:
  kanoclip export --preset kanoclip-tiny --out model-onnx                          offline smoke run
  kanoclip export --checkpoint runs/mvtec/final --out model-onnx                     ONNX, fp32
  kanoclip export --checkpoint runs/mvtec/final --format openvino --precision bf16 --out model-ov
  kanoclip export --class-name screw --reference good/ --format openvino --precision int8 \\
      --calibration-images 'line3/*.png' --out screw-int8
  kanoclip detect line3/ --engine openvino --exported model-ov                        then run it

one graph from RGB in [0, 1] at the run resolution to scores and maps: text features, references and thresholds are
baked in, the batch is dynamic. Needs the export extra: pip install 'kanoclip[export]'.
"""

EXPORT = Command(
    "export",
    "ONNX / OpenVINO for CPUs and edge boxes",
    export,
    (
        Section("export", ExportOptions),
        run_section(defaults={"precision": "fp32"}, choices={"precision": ("fp32", "fp16", "bf16", "int8")}),
        MODEL,
    ),
    EPILOG,
)
