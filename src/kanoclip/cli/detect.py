"""`kanoclip detect`: score images, a video or a stream and write scores, maps and overlays."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from kanoclip.cli.common import MODEL, detector, run_config, run_section
from kanoclip.cli.flags import Command, Parsed, Section
from kanoclip.errors import ConfigError
from kanoclip.options import option

VIDEO = "a video file (pip install 'kanoclip[video]')"
RAY = "many machines (Ray Data; pip install 'kanoclip[ray]')"


@dataclass(frozen=True, kw_only=True)
class DetectOptions:
    inputs: tuple[str, ...] = option(
        positional=True, metavar="PATH", help="image files, folders (searched recursively), globs, or one video"
    )
    out: str = option("results", metavar="DIR", help="output folder")
    no_maps: bool = option(False, help="write scores.csv only")
    report: int | None = option(
        None,
        nargs="?",
        const=8,
        metavar="N",
        help="also write report.html: score histogram, the N (default 8) most and least anomalous overlays, "
        "unreadable files, the run's settings",
    )
    overwrite: bool = option(
        False, help="replace another run's outputs in --out (rerunning the same run resumes it instead)"
    )
    fps: float = option(1.0, group=VIDEO, help="frames scored per second of video (0: every frame)")
    annotate: bool = option(False, group=VIDEO, help="also write annotated.mp4: overlay and score per frame")
    ray: str | None = option(
        None,
        nargs="?",
        const="",
        metavar="ADDRESS",
        group=RAY,
        help="score on Ray: alone, a local instance on 127.0.0.1 (or the cluster RAY_ADDRESS names); ADDRESS "
        "(auto, ray://HOST:PORT) joins a cluster. Put it after the inputs (or write --ray=auto). Inputs may also be "
        "list files (.txt, .parquet 'path') and URIs",
    )
    ray_workers: int = option(1, group=RAY, help="actors, each holding one model")
    gpus_per_worker: float = option(0.0, group=RAY, help="GPUs per actor")


def run(parsed: Parsed) -> int:
    from kanoclip.data.inputs import expand_inputs
    from kanoclip.data.video import is_live, is_video
    from kanoclip.inference.outputs import detect_files, detect_video

    o, run = parsed.get(DetectOptions), run_config(parsed)
    if o.fps < 0:
        raise ConfigError(f"--fps must be >= 0 (0: every frame), got {o.fps}")
    if o.ray is None and (o.ray_workers != 1 or o.gpus_per_worker):
        raise ConfigError("--ray-workers and --gpus-per-worker apply to a run on Ray: add --ray")
    if o.report is not None and (o.no_maps or o.report < 1):
        raise ConfigError("--report N shows N >= 1 overlays of each end: give N >= 1, without --no-maps")
    inputs = list(o.inputs)
    if o.ray is not None:
        from kanoclip.inference.scale_out import detect_on_ray

        summary = detect_on_ray(
            run, inputs, o.out, o.ray or None, o.ray_workers, o.gpus_per_worker, not o.no_maps, overwrite=o.overwrite
        )
    elif any(is_video(i) for i in inputs):
        if len(inputs) != 1:
            raise ConfigError("detect takes one video at a time (or images only): give the video alone")
        if not is_live(inputs[0]) and not Path(inputs[0]).is_file():
            raise ConfigError(f"{inputs[0]}: no such video file")
        summary = detect_video(
            detector(parsed), inputs[0], o.out, o.fps or None, not o.no_maps, o.annotate, o.overwrite
        )
    else:
        expand_inputs(inputs)  # a missing input fails before the model is built
        summary = detect_files(detector(parsed), inputs, o.out, not o.no_maps, o.overwrite)
    done = summary.images - len(summary.failed)
    print(
        f"{done} of {summary.images} images scored -> {summary.scores_csv}"
        + ("" if o.no_maps else f"; overlays and maps in {Path(o.out) / 'maps'}")
    )
    if o.report is not None:
        from kanoclip.evaluation.detect_report import write_report
        from kanoclip.inference.outputs import RunFolder

        print(f"report -> {write_report(RunFolder(o.out), o.report, summary.failed)}")
    if summary.skipped_masks:
        print(f"skipped {summary.skipped_masks} ground-truth mask files (in ground_truth/ or masks/, or named *_mask)")
    for _, reason in summary.failed:
        print(f"  failed: {reason}", file=sys.stderr)
    return 1 if summary.failed else 0


EPILOG = """examples:
  kanoclip detect examples/parts --preset kanoclip-tiny --out results       offline smoke run on the shipped images
  kanoclip detect examples/parts --preset kanoclip-tiny --threshold 0 --defect-types scratch,dent --out typed
  kanoclip detect photos/ --out results                       training-free, default backbone (downloads once)
  kanoclip detect 'line3/*.png' --checkpoint runs/mvtec/final --threshold 0.6
  kanoclip detect part.tif --pretrained /models/ViT-L-14-336px.pt
  kanoclip detect line3/ --reference good_parts/ --class-name screw   few-shot: a few good parts as references
  kanoclip detect line3/ --class-name bottle --threshold 0.6 --defect-examples labelled/   few-shot defect types
  kanoclip detect line3.mp4 --fps 2 --annotate --reference good_parts/     per-frame scores and an annotated video
  kanoclip detect line3/ --class-name screw --report 12       report.html: histogram, 12 most/least anomalous
  kanoclip detect line3/ --calibration cal.json --overlay-scale threshold     the pixel threshold mid-scale
  kanoclip detect photos/ --class-name screw --print-config > screw.yaml      the options as YAML ...
  kanoclip detect --config screw.yaml                                          ... and run them again

writes DIR/scores.csv (path,score[,label][,map][,defect_type,defect_type_p]), DIR/maps/<name>.overlay.png (heatmap
overlay with its colour bar) and DIR/maps/<name>.npy (the map at the image's own size); the overlays' colour scale is
in DIR/run.json. With a threshold, each image judged anomalous is typed: its class's shipped defect types (or
--defect-types), by CLIP text and, with --defect-examples DIR/<type>/*.png, by those examples; empty when judged
normal, 'unknown' below --type-min-p. A file that cannot be read is reported and skipped; exit status 1 if any was
skipped, 2 for a usage or input error, 3 when the disk filled up. Rerunning the same command resumes an interrupted
run; another run's outputs in DIR are refused unless --overwrite.
"""

DETECT = Command(
    "detect",
    "score images and write heatmaps",
    run,
    (Section("detect", DetectOptions), run_section(skip=()), MODEL),
    EPILOG,
)
