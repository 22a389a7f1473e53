"""`kanoclip calibrate` and `kanoclip reference build`: what a line's own parts set up, thresholds and few-shot
banks."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from kanoclip.cli.common import MODEL, detector, report_unreadable, run_section
from kanoclip.cli.flags import Command, Parsed, Section
from kanoclip.errors import ConfigError
from kanoclip.options import option


@dataclass(frozen=True, kw_only=True)
class CalibrateOptions:
    normal: tuple[str, ...] = option(
        (), positional=True, metavar="NORMAL", help="images of good parts (files, folders, globs)"
    )
    anomalous: tuple[str, ...] = option(
        (),
        metavar="PATH",
        help="images of defective parts (a file, folder or quoted glob; repeat the flag for more): F1-max thresholds",
    )
    dataset: str | None = option(
        None,
        metavar="DIR",
        help="instead of folders: any known dataset layout (its test split; masks give the map threshold by pixel "
        "F1-max)",
    )
    layout: str | None = option(None, help="dataset layout, when detection is ambiguous")
    false_alarm_rate: float = option(0.01, help="normal images only: share of good parts that may be flagged")
    out: str | None = option(
        None,
        metavar="FILE",
        help="training-free mode: where to write the calibration JSON (default calibration.json); with --checkpoint "
        "it goes into the checkpoint's config.json",
    )


def calibrate(parsed: Parsed) -> int:
    from kanoclip.data.datasets import Sample, load_dataset
    from kanoclip.data.inputs import expand_inputs
    from kanoclip.evaluation.calibration import calibrate, store

    o = parsed.get(CalibrateOptions)
    if o.dataset:
        index = load_dataset(o.dataset, o.layout)
        print(index.summary())
        normal = [s for s in index.test if s.label == 0] + index.train
        anomalous = [s for s in index.test if s.label == 1]
    elif o.normal:
        normal = [Sample(p, 0, "images") for p in expand_inputs(list(o.normal))[0]]
        anomalous = [Sample(p, 1, "images") for p in expand_inputs(list(o.anomalous))[0]] if o.anomalous else []
        print(f"{len(normal)} normal and {len(anomalous)} anomalous images")
    else:
        raise ConfigError("give a folder of normal images, or --dataset DIR")
    det = detector(parsed)
    result = calibrate(det, normal, anomalous, o.false_alarm_rate)
    where = store(result, det, o.out)
    for level in ("image", "pixel"):
        t = result[level]
        if t["method"] == "f1_max":
            print(
                f"{level} threshold {t['value']:.6f}: F1 {t['f1']:.3f}, precision {t['precision']:.3f}, "
                f"recall {t['recall']:.3f} on {t['images']} images"
            )
        else:
            print(
                f"{level} threshold {t['value']:.6f}: false-alarm rate {t['false_alarm_rate']:g} on {t['images']} "
                "normal images"
            )
        if t.get("warning"):
            print(f"kanoclip: warning: {t['warning']}", file=sys.stderr)
    print(f"stored in {where}; detect and serve now add labels (and binary masks for maps)")
    return report_unreadable(result["unreadable"])


@dataclass(frozen=True, kw_only=True)
class ReferenceBuildOptions:
    images: tuple[str, ...] = option(positional=True, metavar="PATH", help="good parts: files, folders, globs")
    out: str = option(metavar="FILE", help="the bank file to write (.kref)")


def build_bank(parsed: Parsed) -> int:
    from kanoclip.data.inputs import expand_inputs

    o = parsed.get(ReferenceBuildOptions)
    if not o.out.endswith(".kref"):
        raise ConfigError(f"--out {o.out}: name the bank file *.kref, so that --reference recognises it")
    paths, _ = expand_inputs(list(o.images))
    det = detector(parsed)
    bank = det.add_references(paths)
    bank.save(o.out)
    info = bank.describe()
    print(
        f"{bank.images} good part(s) -> {o.out}: {info['patches_per_level']} patches per level, "
        f"{info['bytes'] / 2**20:.1f} MiB" + (f" (coreset of {bank.reduced_from})" if bank.reduced_from else "")
    )
    return 0


CALIBRATE_EPILOG = """examples:
  kanoclip calibrate examples/parts/good --preset kanoclip-tiny --out cal.json    offline smoke run
  kanoclip calibrate good_parts/ --checkpoint runs/mvtec/final                    1% of good parts flagged
  kanoclip calibrate good_parts/ --anomalous bad_parts/ --checkpoint runs/mvtec/final   F1-max threshold
  kanoclip calibrate --dataset /data/my_line --false-alarm-rate 0.001 --out line.json  training-free

with normal images only, the threshold is the score that at most --false-alarm-rate of them reach; it says how many
images that rests on and warns when there are too few for the rate.
"""

REFERENCE_EPILOG = """examples:
  kanoclip reference build examples/parts/good --preset kanoclip-tiny --out good.kref   offline smoke run
  kanoclip reference build good_parts/ --out line3.kref --checkpoint runs/mvtec/final
  kanoclip detect line3/ --reference line3.kref --checkpoint runs/mvtec/final
  kanoclip detect line3/ --reference good_parts/ --class-name screw          training-free, references inline

a bank holds the good parts' patch features and what they were made with (backbone fingerprint, resolution, taps,
checkpoint); a bank made for another model is refused. Few-shot maps: 1 - max cosine to the bank, blended with the
zero-shot map (reference_weight, reference_score, reference_augment, reference_max_patches in `kanoclip info`).
"""

CALIBRATE = Command(
    "calibrate",
    "choose image and map thresholds",
    calibrate,
    (Section("calibrate", CalibrateOptions), run_section(), MODEL),
    CALIBRATE_EPILOG,
)
REFERENCE = Command(
    "reference",
    "few-shot: build a bank of good parts",
    subcommands=(
        Command(
            "build",
            "encode good parts into a bank file for --reference",
            build_bank,
            (Section("reference", ReferenceBuildOptions), run_section(), MODEL),
            REFERENCE_EPILOG,
        ),
    ),
    epilog=REFERENCE_EPILOG,
)
