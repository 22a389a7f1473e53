"""The `kanoclip` command: argument parsing only; every subcommand calls one library function."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kanoclip._version import __version__
from kanoclip.errors import ConfigError, KanoclipError
from kanoclip.inference.config import ENGINES, RunConfig
from kanoclip.model.config import OVERLAY_SCALES, PRECISIONS, KAnoCLIPConfig, TrainConfig

EXIT_DISK_FULL = 3  # 1: some images unreadable, 2: a usage or input error

EPILOG = """examples:
  kanoclip info                                    resolved config and parameter counts of the default model
  kanoclip info --backbone ViT-B-16 --image-size 224
  kanoclip info --pretrained /models/ViT-L-14-336px.pt   an OpenAI .pt file or an open_clip checkpoint
  kanoclip info --set tap_mode=top --set map_sigma=2      any config field, value as JSON

weights: --pretrained takes an open_clip tag (default 'openai', downloaded and cached by open_clip), a local file,
or 'none' for random weights (tests and smoke runs only: the outputs then measure the pipeline, not the method).
"""


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--config", metavar="JSON", help="a KAnoCLIPConfig JSON file to start from")
    group.add_argument("--backbone", help="open_clip model name or model-config .json (default ViT-L-14-336)")
    group.add_argument("--pretrained", help="open_clip tag, local checkpoint file, or 'none' (default openai)")
    group.add_argument("--image-size", type=int, help="run resolution in pixels (default 518)")
    group.add_argument(
        "--trust-torchscript",
        action="store_true",
        help="load a TorchScript --pretrained file that is not one of OpenAI's releases (it runs the code inside it)",
    )
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help='override any config field; VALUE is JSON (e.g. tap_layers=[12,24], tap_mode="top")',
    )


def model_changes(args: argparse.Namespace) -> tuple[tuple[str, Any], ...]:
    """The config fields the model options set, in order: the named flags, then --set (values as JSON)."""
    if args.trust_torchscript:
        import os

        from kanoclip.model.backbone import TRUST_TORCHSCRIPT

        os.environ[TRUST_TORCHSCRIPT] = "1"  # read where the file is loaded (Ray actors and DataLoaders inherit it)
    changes: list[tuple[str, Any]] = []
    for flag, field in (("backbone", "backbone"), ("pretrained", "pretrained"), ("image_size", "image_size")):
        if getattr(args, flag) is not None:
            changes.append((field, getattr(args, flag)))
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # bare strings need no quotes
        changes.append((key.strip().replace("-", "_"), tuple(value) if isinstance(value, list) else value))
    return tuple(changes)


def model_config(args: argparse.Namespace) -> KAnoCLIPConfig:
    """The config named by the model options: file, then the named flags, then --set overrides."""
    return RunConfig(model_file=args.config, model_changes=model_changes(args)).model_config()


def cmd_info(args: argparse.Namespace) -> int:
    from kanoclip.model.kanoclip import KAnoCLIP

    model = KAnoCLIP(model_config(args))
    counts = model.parameter_counts()
    print(f"backbone: {model.backbone_source}")
    print("resolved config:")
    for key, value in model.config.to_dict().items():
        print(f"  {key}: {json.dumps(value)}")
    print("parameters:")
    print(f"  frozen (CLIP):        {counts['frozen']:>13,}")
    print(f"  learnable:            {counts['learnable']:>13,}")
    for part in ("prompts", "bi_cmci", "adapter"):
        print(f"    {part:<19} {counts[part]:>13,}")
    return 0


def add_run_options(
    parser: argparse.ArgumentParser,
    precision: str = "auto",
    precisions: tuple[str, ...] = PRECISIONS,
    precision_help: str = "auto: bf16 autocast on GPU, fp32 on CPU",
) -> None:
    """A model ready to run: a checkpoint, or training-free mode on the model options. Commands that reproduce
    published tables default to fp32, as the reference implementations ran."""
    add_model_options(parser)
    group = parser.add_argument_group("run")
    group.add_argument(
        "--checkpoint", metavar="DIR", help="a folder written by `kanoclip train` (default: training-free)"
    )
    group.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    group.add_argument(
        "--precision",
        default=precision,
        choices=precisions,
        help=f"{precision_help} (default {precision})",
    )
    group.add_argument("--batch-size", type=int, default=8)
    group.add_argument("--workers", type=int, default=2, help="image-decoding processes (0: in the main process)")
    group.add_argument("--compile", action="store_true", help="torch.compile the model (GPU; slow first batch)")
    group.add_argument(
        "--engine",
        default="torch",
        choices=ENGINES,
        help="torch runs the model; onnxruntime / openvino run a folder from `kanoclip export` (--exported) on the "
        "CPU, with its model, text, references and precision baked in",
    )
    group.add_argument(
        "--exported",
        "--model",
        dest="exported",
        metavar="DIR",
        help="with --engine onnxruntime|openvino: the folder `kanoclip export` wrote (--model is its old name)",
    )
    group.add_argument(
        "--calibration",
        metavar="FILE",
        help="training-free mode: thresholds from `kanoclip calibrate` (a checkpoint carries its own)",
    )
    group.add_argument(
        "--class-name",
        "--knowledge-class",
        dest="class_name",
        help="training-free mode: what the images show (e.g. bottle, screw, pcb, 'brain mri'); its text comes from "
        "the shipped knowledge base and a prompt ensemble (default: object)",
    )
    group.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="PATH",
        help="good parts as few-shot references: images, folders, quoted globs, or a bank file from "
        "`kanoclip reference build` (.kref); repeat the flag for more",
    )
    group.add_argument(
        "--max-pixels",
        type=int,
        default=RunConfig.max_pixels,
        help=f"refuse images over this many pixels, before decoding them (default {RunConfig.max_pixels:,})",
    )
    group.add_argument(
        "--overlay-scale",
        choices=OVERLAY_SCALES,
        default=RunConfig.overlay_scale,
        help="the overlays' colour scale: threshold (the pixel threshold at the middle), run (the first batch's "
        "1st..99th percentiles, fixed for the run), fixed (0..1); auto: threshold when calibrated, else run. "
        "Recorded in run.json; each overlay carries its colour bar",
    )


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run options as a RunConfig: flags in, nothing decided here (RunConfig.validate refuses what cannot
    apply; Detector.from_config builds it)."""
    return RunConfig(
        engine=args.engine,
        exported=args.exported,
        checkpoint=args.checkpoint,
        model_file=args.config,
        model_changes=model_changes(args),
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        workers=args.workers,
        compile=args.compile,
        class_name=args.class_name,
        references=tuple(args.reference),
        calibration=args.calibration,
        image_threshold=getattr(args, "threshold", None),
        max_pixels=args.max_pixels,
        overlay_scale=args.overlay_scale,
    )


def detector(args: argparse.Namespace) -> Any:
    """The Detector a command runs, built by the one factory."""
    from kanoclip.inference.detector import Detector

    det = Detector.from_config(run_config(args))
    if det.references is not None:
        print(
            f"references: {det.references.images} good part(s), {det.references.describe()['patches_per_level']} "
            "patches per level"
        )
    return det


def add_detect_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders (searched recursively), globs")
    parser.add_argument("--out", default="results", metavar="DIR", help="output folder (default: results)")
    parser.add_argument(
        "--threshold",
        type=float,
        help="label images with score >= T as anomalous (1); default: the checkpoint's calibration, if any",
    )
    parser.add_argument("--no-maps", action="store_true", help="write scores.csv only")
    parser.add_argument(
        "--report",
        nargs="?",
        const=8,
        type=int,
        metavar="N",
        help="also write report.html: score histogram, the N (default 8) most and least anomalous overlays, "
        "unreadable files, the run's settings",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace another run's outputs in --out (rerunning the same run resumes it instead)",
    )
    group = parser.add_argument_group("a video file (pip install 'kanoclip[video]')")
    group.add_argument("--fps", type=float, default=1.0, help="frames scored per second of video (0: every frame)")
    group.add_argument("--annotate", action="store_true", help="also write annotated.mp4: overlay and score per frame")
    group = parser.add_argument_group("many machines (Ray Data; pip install 'kanoclip[ray]')")
    group.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="score on Ray: alone, a local instance on 127.0.0.1 (or the cluster RAY_ADDRESS names); ADDRESS "
        "(auto, ray://HOST:PORT) joins a cluster. Put it after the inputs (or write --ray=auto). Inputs may also be "
        "list files (.txt, .parquet 'path') and URIs",
    )
    group.add_argument("--ray-workers", type=int, default=1, help="actors, each holding one model (default 1)")
    group.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor (default 0)")
    add_run_options(parser)


def cmd_detect(args: argparse.Namespace) -> int:
    from kanoclip.data.inputs import expand_inputs
    from kanoclip.data.video import is_live, is_video
    from kanoclip.inference.outputs import detect_files, detect_video

    run = run_config(args)
    if args.report is not None and (args.no_maps or args.report < 1):
        raise ConfigError("--report N shows N >= 1 overlays of each end: give N >= 1, without --no-maps")
    if args.ray is not None:
        from kanoclip.inference.scale_out import detect_on_ray

        summary = detect_on_ray(
            run,
            args.inputs,
            args.out,
            args.ray or None,
            args.ray_workers,
            args.gpus_per_worker,
            not args.no_maps,
            overwrite=args.overwrite,
        )
    elif any(is_video(i) for i in args.inputs):
        if len(args.inputs) != 1:
            raise ConfigError("detect takes one video at a time (or images only): give the video alone")
        if not is_live(args.inputs[0]) and not Path(args.inputs[0]).is_file():
            raise ConfigError(f"{args.inputs[0]}: no such video file")
        summary = detect_video(
            detector(args), args.inputs[0], args.out, args.fps or None, not args.no_maps, args.annotate, args.overwrite
        )
    else:
        expand_inputs(args.inputs)  # a missing input fails before the model is built
        summary = detect_files(detector(args), args.inputs, args.out, not args.no_maps, args.overwrite)
    done = summary.images - len(summary.failed)
    print(
        f"{done} of {summary.images} images scored -> {summary.scores_csv}"
        + ("" if args.no_maps else f"; overlays and maps in {Path(args.out) / 'maps'}")
    )
    if args.report is not None:
        from kanoclip.evaluation.detect_report import write_report
        from kanoclip.inference.outputs import RunFolder

        print(f"report -> {write_report(RunFolder(args.out), args.report, summary.failed)}")
    if summary.skipped_masks:
        print(f"skipped {summary.skipped_masks} ground-truth mask files (in ground_truth/ or masks/, or named *_mask)")
    for _, reason in summary.failed:
        print(f"  failed: {reason}", file=sys.stderr)
    return 1 if summary.failed else 0


def add_evaluate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("datasets", nargs="+", metavar="DIR", help="dataset folders in any known layout")
    parser.add_argument("--layout", help="the layout of every DIR, when detection is ambiguous (e.g. kolektor-thirds)")
    parser.add_argument("--out", default="evaluation", metavar="DIR", help="output folder (default: evaluation)")
    parser.add_argument("--cases", type=int, default=3, help="best and worst images shown per class in the report")
    parser.add_argument(
        "--aupro",
        choices=("exact", "anomalyclip"),
        default="exact",
        help="exact over all thresholds, or the 200-threshold variant of published tables",
    )
    parser.add_argument(
        "--shots",
        type=int,
        default=0,
        metavar="K",
        help="few-shot: K normal train images of each class as references (default 0: zero-shot)",
    )
    parser.add_argument(
        "--shot-seeds",
        default="0,1,2",
        metavar="S,S,...",
        help="few-shot: one draw of references per seed; tables report mean ± std (default 0,1,2)",
    )
    add_run_options(parser, precision="fp32")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from kanoclip.data.datasets import load_dataset
    from kanoclip.evaluation.protocol import evaluate, markdown_table
    from kanoclip.inference.distributed import init_distributed

    place = init_distributed(args.device)  # under torchrun: images sharded over ranks, metrics on rank 0
    indices = [load_dataset(path, args.layout) for path in args.datasets]
    for index in indices:
        if place.main:
            print(index.summary())
    det = detector(args)
    seeds = [int(x) for x in args.shot_seeds.split(",") if x.strip()]
    if args.shots < 0 or (args.shots and not seeds):
        raise ConfigError("--shots must be >= 0, with at least one --shot-seeds value")
    info = {**det.describe(), "aupro": args.aupro, "datasets": [str(i.root) for i in indices]}
    info.pop("text")  # per class in results.json: training-free text follows each class
    if args.shots:
        info["few_shot"] = {"shots": args.shots, "seeds": seeds}
    if place.world > 1:
        info["processes"] = place.world
    results = evaluate(det, indices, args.out, args.cases, args.aupro, info, args.shots, seeds)
    if not place.main:
        return 0
    print(markdown_table(results))
    if info["random_weights"]:
        print("note: random CLIP weights: these numbers measure the pipeline, not the method")
    print(f"tables and report in {args.out}/ (results.md, results.csv, results.json, report.html)")
    return _report_unreadable([reason for r in results for reason in r.unreadable])


def _report_unreadable(reasons: list[str]) -> int:
    """Exit status 1, with each file listed, when images could not be read; results are written all the same."""
    for reason in reasons:
        print(f"  unreadable: {reason}", file=sys.stderr)
    if reasons:
        print(f"kanoclip: {len(reasons)} image(s) could not be read (listed above)", file=sys.stderr)
    return 1 if reasons else 0


def add_knowledge_options(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    general = sub.add_parser("general", help="normal/abnormal sentences per class from a chat model")
    general.add_argument("classes", nargs="*", help="class names (default: every class of the shipped base)")
    images = sub.add_parser("images", help="one description per image of an auxiliary dataset from a vision model")
    images.add_argument("dataset", metavar="DIR", help="the auxiliary dataset (its test split, as in training)")
    images.add_argument("--layout", help="dataset layout, when detection is ambiguous")
    check = sub.add_parser("check", help="lint a knowledge file (no server): lengths, articles, repeats, naming")
    check.add_argument("file", nargs="?", metavar="FILE", help="a general-knowledge JSON (default: the shipped base)")
    for p in (general, images):
        p.add_argument("--out", required=True, metavar="FILE", help="the knowledge JSON to write")
        p.add_argument(
            "--base-url",
            help="OpenAI-compatible server, e.g. http://localhost:11434/v1 (Ollama), "
            "http://localhost:8000/v1 (vLLM); env KANOCLIP_LLM_BASE_URL; default api.openai.com",
        )
        p.add_argument("--model", help="chat model name; env KANOCLIP_LLM_MODEL")
        p.add_argument("--api-key", help="env KANOCLIP_LLM_API_KEY or OPENAI_API_KEY")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
        p.add_argument("--retries", type=int, default=4, help="retries on 429, 5xx, timeouts (default 4)")
        p.add_argument(
            "--cache",
            default="~/.cache/kanoclip/answers.jsonl",
            metavar="FILE",
            help="answer cache: a re-run asks only what is missing",
        )
        p.add_argument(
            "--templates", metavar="DIR", help="prompt templates replacing ours (same file names; {name}, {a_name})"
        )


def cmd_knowledge(args: argparse.Namespace) -> int:
    from kanoclip._files import atomic_write_json
    from kanoclip.knowledge.base import KnowledgeBase
    from kanoclip.knowledge.cache import AnswerCache
    from kanoclip.knowledge.client import ChatClient, ServerConfig
    from kanoclip.knowledge.generate import generate_general, generate_images, load_templates

    if args.what == "check":
        return _check_knowledge(args.file)
    client = ChatClient(ServerConfig(args.base_url, args.model, args.api_key, args.timeout, args.retries))
    cache, templates = AnswerCache(args.cache), load_templates(args.templates)
    if args.what == "general":
        knowledge, progress = generate_general(
            client, args.classes or list(KnowledgeBase.load().classes), cache, templates
        )
        knowledge.save(args.out, progress.failures)
    else:
        from kanoclip.data.datasets import load_dataset

        index = load_dataset(args.dataset, args.layout)
        print(index.summary())
        document, progress = generate_images(client, index, cache, templates)
        atomic_write_json(Path(args.out), document)
    print(f"{progress.done} answered, {progress.failed} failed -> {args.out}")
    for failure in progress.failures:
        print(f"  failed: {failure['item']}: {failure['reason']}", file=sys.stderr)
    return 1 if progress.failed else 0


def _check_knowledge(path: str | None) -> int:
    from kanoclip.knowledge.base import KnowledgeBase
    from kanoclip.knowledge.lint import defect_types, lint_base

    knowledge = KnowledgeBase.load(path)
    problems = lint_base(knowledge.classes, defect_types())
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    counts = sum(len(e.normal) + len(e.abnormal) for e in knowledge.classes.values())
    where = path or "the shipped knowledge base"
    print(f"{where}: {len(knowledge.classes)} classes, {counts} sentences, {len(problems)} problem(s)")
    return 1 if problems else 0


def add_train_options(parser: argparse.ArgumentParser, data: bool = True) -> None:
    if data:
        parser.add_argument("dataset", metavar="DIR", help="the auxiliary dataset; its test split is trained on")
        parser.add_argument("--layout", help="dataset layout, when detection is ambiguous")
        parser.add_argument(
            "--out",
            default="runs/train",
            metavar="DIR",
            help="run folder: resumable state, log.jsonl, final/ checkpoint (default runs/train)",
        )
        parser.add_argument(
            "--image-knowledge",
            metavar="FILE",
            help="per-image VQA knowledge (kanoclip knowledge images) for the KD loss",
        )
    parser.add_argument("--knowledge", metavar="FILE", help="general knowledge JSON (default: the shipped base)")
    parser.add_argument(
        "--general-knowledge-only",
        action="store_true",
        help="KD on general knowledge only, no per-image VQA knowledge (sets kd_use_vqa=false)",
    )
    group = parser.add_argument_group("training (defaults: SPEC §4)")
    defaults = TrainConfig()
    group.add_argument("--epochs", type=int, default=defaults.epochs)
    group.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global, over all processes")
    group.add_argument("--lr-prompts", type=float, default=defaults.lr_prompts)
    group.add_argument("--lr-modules", type=float, default=defaults.lr_modules, help="Bi-CMCI and Conv-Adapter")
    group.add_argument("--seed", type=int, default=defaults.seed)
    group.add_argument(
        "--precision",
        default=defaults.precision,
        choices=PRECISIONS,
        help=f"fp32 as the reference implementations; auto: bf16 autocast on GPU (default {defaults.precision})",
    )
    group.add_argument("--workers", type=int, default=defaults.num_workers)
    group.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, help="steps between states")
    group.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda (under torchrun: one GPU per process)")
    add_model_options(parser)


def train_settings(args: argparse.Namespace) -> tuple[KAnoCLIPConfig, TrainConfig]:
    config = model_config(args)
    if args.general_knowledge_only:
        config = config.replace(kd_use_vqa=False)
    train_config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr_prompts=args.lr_prompts,
        lr_modules=args.lr_modules,
        seed=args.seed,
        precision=args.precision,
        num_workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        max_steps=args.max_steps,
    )
    return config, train_config


def cmd_train(args: argparse.Namespace) -> int:
    from kanoclip.data.datasets import load_dataset
    from kanoclip.knowledge import KnowledgeBase, load_image_knowledge
    from kanoclip.training.loop import train

    config, train_config = train_settings(args)
    index = load_dataset(args.dataset, args.layout)
    print(index.summary())
    final = train(
        config,
        train_config,
        index,
        args.out,
        KnowledgeBase.load(args.knowledge) if args.knowledge else None,
        load_image_knowledge(args.image_knowledge) if args.image_knowledge else None,
        args.device,
    )
    print(f"checkpoint: {final}  (use it with: kanoclip detect IMAGES --checkpoint {final})")
    return 0


def add_reproduce_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", required=True, metavar="DIR", help="a folder holding the datasets")
    parser.add_argument("--out", default="runs/reproduce", metavar="DIR")
    parser.add_argument(
        "--image-knowledge",
        action="append",
        default=[],
        metavar="DATASET=FILE",
        help='per-image VQA knowledge of a training set, e.g. "MVTec AD=mvtec_vqa.json"',
    )
    parser.add_argument(
        "--shots",
        default="",
        metavar="K,K,...",
        help="also a few-shot table: K normal train images per class as references, e.g. 1,2,4 (default: none)",
    )
    parser.add_argument("--shot-seeds", default="0,1,2", metavar="S,S,...", help="few-shot draws (default 0,1,2)")
    add_train_options(parser, data=False)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from kanoclip.evaluation.reproduce import reproduce

    config, train_config = train_settings(args)
    vqa = dict(item.split("=", 1) for item in args.image_knowledge)
    print(
        reproduce(
            args.data_root,
            args.out,
            config,
            train_config,
            vqa,
            args.device,
            args.batch_size,
            args.workers,
            args.precision,
            tuple(int(k) for k in args.shots.split(",") if k.strip()),
            tuple(int(k) for k in args.shot_seeds.split(",") if k.strip()),
        )
    )
    return 0


def add_calibrate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("normal", nargs="*", metavar="NORMAL", help="images of good parts (files, folders, globs)")
    parser.add_argument(
        "--anomalous",
        action="append",
        default=[],
        metavar="PATH",
        help="images of defective parts (a file, folder or quoted glob; repeat the flag for more): F1-max thresholds",
    )
    parser.add_argument(
        "--dataset",
        metavar="DIR",
        help="instead of folders: any known dataset layout (its test split;"
        " masks give the map threshold by pixel F1-max)",
    )
    parser.add_argument("--layout", help="dataset layout, when detection is ambiguous")
    parser.add_argument(
        "--false-alarm-rate",
        type=float,
        default=0.01,
        help="normal images only: share of good parts that may be flagged (default 0.01)",
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="training-free mode: where to write the calibration JSON "
        "(default calibration.json); with --checkpoint it goes into the checkpoint's config.json",
    )
    add_run_options(parser)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from kanoclip.data.datasets import Sample, load_dataset
    from kanoclip.data.inputs import expand_inputs
    from kanoclip.evaluation.calibration import calibrate, store

    if args.dataset:
        index = load_dataset(args.dataset, args.layout)
        print(index.summary())
        normal = [s for s in index.test if s.label == 0] + index.train
        anomalous = [s for s in index.test if s.label == 1]
    elif args.normal:
        normal = [Sample(p, 0, "images") for p in expand_inputs(args.normal)[0]]
        anomalous = [Sample(p, 1, "images") for p in expand_inputs(args.anomalous)[0]] if args.anomalous else []
        print(f"{len(normal)} normal and {len(anomalous)} anomalous images")
    else:
        raise ConfigError("give a folder of normal images, or --dataset DIR")
    det = detector(args)
    result = calibrate(det, normal, anomalous, args.false_alarm_rate)
    where = store(result, det, args.out)
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
            print(f"warning: {t['warning']}", file=sys.stderr)
    print(f"stored in {where}; detect and serve now add labels (and binary masks for maps)")
    return _report_unreadable(result["unreadable"])


def add_reference_options(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    build = sub.add_parser("build", help="encode good parts into a bank file for --reference")
    build.add_argument("images", nargs="+", metavar="PATH", help="good parts: files, folders, globs")
    build.add_argument("--out", required=True, metavar="FILE", help="the bank file to write (.kref)")
    add_run_options(build)


def cmd_reference(args: argparse.Namespace) -> int:
    from kanoclip.data.inputs import expand_inputs

    if not args.out.endswith(".kref"):
        raise ConfigError(f"--out {args.out}: name the bank file *.kref, so that --reference recognises it")
    paths, _ = expand_inputs(args.images)
    det = detector(args)
    bank = det.add_references(paths)
    bank.save(args.out)
    info = bank.describe()
    print(
        f"{bank.images} good part(s) -> {args.out}: {info['patches_per_level']} patches per level, "
        f"{info['bytes'] / 2**20:.1f} MiB" + (f" (coreset of {bank.reduced_from})" if bank.reduced_from else "")
    )
    return 0


def add_export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="onnx", choices=("onnx", "openvino"), help="default onnx")
    parser.add_argument(
        "--calibration-images", nargs="+", default=[], metavar="PATH", help="int8: images to quantise on (your own)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write (model + manifest.json)")
    add_run_options(
        parser,
        "fp32",
        ("fp32", "fp16", "bf16", "int8"),
        "the exported model's: onnx fp32; openvino fp32, fp16 (weights), bf16 (compute), int8 (NNCF, needs "
        "--calibration-images)",
    )


def cmd_export(args: argparse.Namespace) -> int:
    from kanoclip.data.inputs import expand_inputs
    from kanoclip.inference.export import export

    calibration = expand_inputs(args.calibration_images)[0] if args.calibration_images else []
    precision, args.precision = args.precision, "fp32"  # the graph is traced in fp32, then converted
    folder = export(detector(args), args.out, args.format, precision, calibration)
    print(f"exported -> {folder} (manifest.json says what it holds)")
    print(
        f"run it: kanoclip detect IMAGES --engine {'openvino' if args.format == 'openvino' else 'onnxruntime'} "
        f"--exported {folder}"
    )
    return 0


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="require the key in FILE on every API call (or env KANOCLIP_API_KEY); keeps it out of `ps`",
    )
    parser.add_argument("--api-key", help="the key itself: visible to every user in `ps`; prefer --api-key-file")
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name the server answers besides loopback and --host (behind a proxy, its public name)",
    )
    parser.add_argument(
        "--max-request-mb", type=float, default=64.0, help="a whole request, counted as it arrives (413 above)"
    )
    parser.add_argument("--max-batch", type=int, default=8, help="images of concurrent requests run together")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits for more images")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="per file (413 above)")
    add_station_options(parser)
    group = parser.add_argument_group("what the station keeps (history, profiles, banks, thresholds)")
    group.add_argument(
        "--no-state",
        action="store_true",
        help="keep nothing: no history, and what the server is taught is lost at exit",
    )
    group.add_argument("--keep-days", type=float, help="prune results older than this many days (default: keep all)")
    group.add_argument("--max-store-gb", type=float, help="prune the oldest results while their files hold more")
    add_run_options(parser)


def add_station_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the station")
    group.add_argument(
        "--state",
        metavar="DIR",
        help=f"the state folder: its SQLite database and the stored images, maps and banks (default {default_state()})",
    )
    group.add_argument(
        "--database",
        metavar="URL",
        help="keep profiles and history in this database instead (postgresql://user@host/db, for several instances "
        "sharing one --state folder); pip install 'kanoclip[postgres]'",
    )
    group.add_argument(
        "--profile",
        default="default",
        metavar="NAME",
        help="the profile the model flags create or change, and that /v1/detect uses (default: default)",
    )


def default_state() -> Path:
    from platformdirs import user_data_path

    return user_data_path("kanoclip") / "station"


def open_station(args: argparse.Namespace, keep: bool = True, must_exist: bool = False) -> Any:
    """The station the flags name, with the `--profile` created or changed by the model flags (`must_exist`: an
    unknown profile without model flags is an error, not a new training-free profile)."""
    from kanoclip.station.db import check_profile_name, hidden
    from kanoclip.station.station import Station

    check_profile_name(args.profile)
    run = run_config(args)
    if not keep and args.database:
        raise ConfigError("--no-state keeps nothing: drop --database (or --no-state)")
    state = Path(args.state).expanduser() if args.state else default_state()
    base = run.replace(class_name=None, references=(), calibration=None, image_threshold=None)
    station = Station.open(base, state if keep else None, args.database)
    if keep:
        where = hidden(args.database) if args.database else str(state)
        print(f"kanoclip: state in {state} (database: {where})", flush=True)
    defaults = RunConfig(**{k: getattr(run, k) for k in ("device", "precision", "batch_size", "workers", "compile")})
    if must_exist and args.profile not in station.profiles and run.replace(max_pixels=defaults.max_pixels) == defaults:
        known = ", ".join(sorted(station.profiles)) or "none yet"
        raise ConfigError(
            f"no profile {args.profile!r} in {state} (profiles: {known}): give model flags (--class-name, "
            "--checkpoint, --reference, ...) to create it"
        )
    profile = station.configure(args.profile, run)
    det = station.detector(args.profile)
    bank = det.references
    print(
        f"profile {profile.name!r}: {profile.class_name or 'object'}, "
        f"{bank.images if bank else 0} good part(s), threshold {det.thresholds.image_threshold}"
    )
    return station


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from kanoclip.station.serve import ServeConfig, listen, serve

    key = os.environ.get("KANOCLIP_API_KEY") or None
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).expanduser().read_text().strip() or None
        except OSError as e:
            raise ConfigError(f"cannot read --api-key-file {args.api_key_file}: {e.strerror or e}") from e
    if args.api_key:
        print(
            "warning: --api-key is visible to every user of this machine in `ps`: use --api-key-file", file=sys.stderr
        )
        key = args.api_key
    config = ServeConfig(
        api_key=key,
        allowed_hosts=(args.host, *args.allowed_host),
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        print(
            f"warning: serving on {args.host} without an API key: anyone who can reach it can use it", file=sys.stderr
        )
    sock = listen(args.host, args.port)  # a port in use is said before the model loads
    serve(open_station(args, keep=not args.no_state), sock, config, args.profile)
    return 0


def add_watch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="a folder to watch, a video file, a camera (/dev/video0) or a stream (rtsp://..., http://... MJPEG)",
    )
    parser.add_argument("--server", metavar="URL", help="score through a running `kanoclip serve` instead of here")
    parser.add_argument("--api-key-file", metavar="FILE", help="the --server's API key (or env KANOCLIP_API_KEY)")
    parser.add_argument("--threshold", type=float, help="the profile's image threshold from now on")
    group = parser.add_argument_group("folders")
    group.add_argument("--existing", choices=("score", "skip"), default="score", help="files there at start")
    group.add_argument("--settle-s", type=float, default=1.0, help="a file is complete once unchanged this long")
    group.add_argument("--max-wait-s", type=float, default=300.0, help="record a file still changing after this")
    group.add_argument(
        "--claim-timeout-s", type=float, default=300.0, help="retry a file whose watcher died this long ago"
    )
    group.add_argument("--poll", action="store_true", help="poll instead of OS events (network filesystems)")
    group.add_argument("--ok-dir", type=Path, metavar="DIR", help="move each good (label 0) file here")
    group.add_argument("--ng-dir", type=Path, metavar="DIR", help="move each defective (label 1) file here")
    group.add_argument("--copy", action="store_true", help="copy into --ok-dir/--ng-dir instead of moving")
    group = parser.add_argument_group("video and cameras")
    group.add_argument("--fps", type=float, default=1.0, help="frames scored per second of video (0: every frame)")
    group = parser.add_argument_group("sinks")
    group.add_argument("--webhook", metavar="URL", help="POST each result as JSON here (retried; never blocks scoring)")
    group.add_argument("--webhook-on", choices=("all", "ng"), default="all", help="every result, or NG only")
    group.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on 127.0.0.1:PORT")
    group.add_argument("--quiet", action="store_true", help="no live progress line")
    add_station_options(parser)
    add_run_options(parser)


def cmd_watch(args: argparse.Namespace) -> int:
    import os

    from kanoclip.station.watch.watcher import LocalScorer, RemoteScorer, WatchConfig, Watcher

    cfg = WatchConfig(
        profile=args.profile,
        existing=args.existing,
        settle_s=args.settle_s,
        max_wait_s=args.max_wait_s,
        claim_timeout_s=args.claim_timeout_s,
        poll=args.poll,
        ok_dir=args.ok_dir,
        ng_dir=args.ng_dir,
        copy=args.copy,
        fps=args.fps or None,
        batch=args.batch_size,
        webhook=args.webhook,
        webhook_on=args.webhook_on,
        progress=not args.quiet,
    )
    scorer: Any
    if args.server:
        key = os.environ.get("KANOCLIP_API_KEY") or None
        if args.api_key_file:
            key = Path(args.api_key_file).expanduser().read_text().strip() or None
        scorer = RemoteScorer(args.server, args.profile, key, args.claim_timeout_s)
    else:
        scorer = LocalScorer(open_station(args, must_exist=True), args.profile)
    watcher = Watcher(scorer, args.sources, cfg)
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        from kanoclip.station.telemetry import ServeMetrics

        metrics = ServeMetrics()
        start_http_server(args.metrics_port, addr="127.0.0.1", registry=metrics.registry)
        watcher.on_result = lambda r: metrics.observe_detection(args.profile, r.get("score"), r.get("label"))
    print(f"kanoclip watch: {', '.join(args.sources)} -> profile {args.profile!r} (Ctrl-C stops)", flush=True)
    counts = watcher.run()
    print(f"{counts['scored']} scored, {counts['ng']} NG, {counts['failed']} failed, {counts['skipped']} already done")
    return 0


def add_history_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("where", metavar="DIR|URL", help="a --state folder, or a --database URL")
    parser.add_argument("--profile", help="one profile's results")
    parser.add_argument("--since", help="from this time (ISO 8601, UTC unless it says otherwise)")
    parser.add_argument("--until", help="before this time")
    parser.add_argument("--label", type=int, choices=(0, 1), help="only good (0) or defect (1) results")
    parser.add_argument("--limit", type=int, default=20, help="the newest N rows (default 20; --csv: all)")
    parser.add_argument("--csv", action="store_true", help="every matching row as CSV on stdout")


def cmd_history(args: argparse.Namespace) -> int:
    from sqlalchemy import Engine

    from kanoclip.station import db as database
    from kanoclip.station.serve import history_csv
    from kanoclip.station.station import Station, iso, parse_time

    if "://" in args.where:
        url, folder = args.where, None
    else:
        folder = Path(args.where).expanduser()
        if not (folder / database.DATABASE_FILE).is_file():
            raise ConfigError(f"{folder} holds no station database ({database.DATABASE_FILE}): give a --state folder")
        url = database.database_url(folder)
    engine: Engine = database.connect(url, upgrade=False)
    if database.current_revision(engine) != database.head_revision():
        raise ConfigError(f"{database.hidden(url)} has an older schema: start `kanoclip serve` on it once to migrate")
    station = Station(RunConfig(), engine, None)
    filters = {
        "profile": args.profile,
        "since": parse_time(args.since),
        "until": parse_time(args.until),
        "label": args.label,
    }
    if args.csv:
        for chunk in history_csv(station.iter_results(**filters)):
            sys.stdout.write(chunk)
        return 0
    rows, _ = station.results(**filters, limit=args.limit)
    for row in rows:
        label = {None: "-", 0: "good", 1: "DEFECT"}[row["label"]] if row["error"] is None else "error"
        score = "-" if row["score"] is None else f"{row['score']:.4f}"
        print(f"{row['id']:>8}  {iso(row['created_at'])}  {row['profile']:<16} {score:>8}  {label:<6}  {row['source']}")
    if not rows:
        print("no results match")
    return 0


TRAIN_EPILOG = """examples:
  kanoclip train /data/mvtec --image-knowledge mvtec_vqa.json --out runs/mvtec       SPEC §4 recipe, resumable
  kanoclip train /data/mvtec --general-knowledge-only --out runs/mvtec
  torchrun --nproc_per_node 4 -m kanoclip train /data/visa --general-knowledge-only --out runs/visa
  kanoclip train /data/KolektorSDD --backbone ViT-B-16 --image-size 224 --general-knowledge-only

re-running the same command continues from the last saved state (every --checkpoint-every steps and each epoch).
"""

REPRODUCE_EPILOG = """examples:
  kanoclip reproduce --data-root /data --general-knowledge-only
  kanoclip reproduce --data-root /data --general-knowledge-only --shots 1,2,4      plus the few-shot table
  kanoclip reproduce --data-root /data --image-knowledge "MVTec AD=mvtec_vqa.json" --image-knowledge "VisA=visa.json"

looks for folders named like mvtec_anomaly_detection, visa, mpdd, btad, KolektorSDD, dagm, dtd-synthetic, headct,
brainmri, br35h, isic, cvc-colondb, cvc-clinicdb, kvasir, endo, tn3k; trains on MVTec AD for every other dataset and
on VisA for MVTec AD; writes reproduce.md beside the published numbers.
"""

SERVE_EPILOG = """examples:
  kanoclip serve --checkpoint runs/mvtec/final                        http://127.0.0.1:8000/ in a browser
  kanoclip serve --host 0.0.0.0 --api-key-file /etc/kanoclip/key --allowed-host inspect.example.com   shared
  curl -F files=@part.png http://127.0.0.1:8000/v1/detect

  kanoclip serve --profile bottle --class-name bottle --reference good_bottles/   a profile, kept in the state folder
  kanoclip serve --state /srv/kanoclip --database postgresql://kanoclip@db/kanoclip --port 8001   a second instance

POST /v1/detect (multipart field "files", one or more; ?return_map=true adds the raw map), GET /v1/health (no key),
GET /v1/info, /v1/profiles, /v1/results, /metrics; the OpenAPI schema at /openapi.json. Every detection is recorded
(`kanoclip history`). Requests from other sites' pages and unknown Host names are refused.
"""

WATCH_EPILOG = """examples:
  kanoclip watch /srv/camera3 --profile bottle --ok-dir /srv/ok --ng-dir /srv/ng     a hot folder, sorted by label
  kanoclip watch /srv/camera3 --profile bottle --class-name bottle --reference good/   create the profile at start
  kanoclip watch rtsp://10.0.0.5/stream --profile bottle --fps 2 --webhook http://mes.local/hook --webhook-on ng
  kanoclip watch line3.mp4 /dev/video0 --profile bottle
  kanoclip watch /srv/camera3 --profile bottle --server http://127.0.0.1:8000   through a running `kanoclip serve`

every file and frame becomes a result in the station's history (`kanoclip history`); a file is scored once it is
complete, exactly once across restarts and across watchers on one database; a stream that drops is reopened with
backoff and the gap is recorded.
"""

HISTORY_EPILOG = """examples:
  kanoclip history ~/.local/share/kanoclip/station                      the newest 20 results
  kanoclip history /srv/kanoclip --profile bottle --since 2026-12-01 --label 1
  kanoclip history postgresql://kanoclip@db/kanoclip --csv > results.csv
"""

CALIBRATE_EPILOG = """examples:
  kanoclip calibrate good_parts/ --checkpoint runs/mvtec/final                    1% of good parts flagged
  kanoclip calibrate good_parts/ --anomalous bad_parts/ --checkpoint runs/mvtec/final   F1-max threshold
  kanoclip calibrate --dataset /data/my_line --false-alarm-rate 0.001 --out line.json  training-free

with normal images only, the threshold is the score that at most --false-alarm-rate of them reach; it says how many
images that rests on and warns when there are too few for the rate.
"""

DETECT_EPILOG = """examples:
  kanoclip detect photos/ --out results                       training-free, default backbone (downloads once)
  kanoclip detect 'line3/*.png' --checkpoint runs/mvtec/final --threshold 0.6
  kanoclip detect part.tif --pretrained /models/ViT-L-14-336px.pt
  kanoclip detect line3/ --reference good_parts/ --class-name screw   few-shot: a few good parts as references
  kanoclip detect examples --backbone kanoclip-tiny --pretrained none --image-size 112   offline smoke run
  kanoclip detect line3.mp4 --fps 2 --annotate --reference good_parts/     per-frame scores and an annotated video
  kanoclip detect line3/ --class-name screw --report 12       report.html: histogram, 12 most/least anomalous
  kanoclip detect line3/ --calibration cal.json --overlay-scale threshold     the pixel threshold mid-scale

writes DIR/scores.csv (path,score[,label]), DIR/maps/<name>.overlay.png (heatmap overlay with its colour bar) and
DIR/maps/<name>.npy (the map at the image's own size); the overlays' colour scale is in DIR/run.json. A file that
cannot be read is reported and skipped; exit status 1 if any was skipped, 2 for a usage or input error, 3 when the
disk filled up. Rerunning the same command resumes an interrupted run; another
run's outputs in DIR are refused unless --overwrite.
"""

EVALUATE_EPILOG = """examples:
  kanoclip evaluate /data/visa /data/mpdd --checkpoint runs/mvtec/final --out eval/
  kanoclip evaluate /data/KolektorSDD --layout kolektor-thirds --aupro anomalyclip
  kanoclip evaluate /data/mvtec --shots 4 --shot-seeds 0,1,2        few-shot: 4 train images per class as references

writes results.md, results.csv, results.json (per class, per defect type and mean: image AUROC/AP/F1-max, pixel
AUROC/AP/F1-max, AUPRO) and a self-contained report.html: per class ROC and PR curves, a score histogram with the
thresholds, the per-defect table and the best and worst images; with --shots, error bars over the seeds.
"""

EXPORT_EPILOG = """examples:
  kanoclip export --checkpoint runs/mvtec/final --out model-onnx                     ONNX, fp32
  kanoclip export --checkpoint runs/mvtec/final --format openvino --precision bf16 --out model-ov
  kanoclip export --class-name screw --reference good/ --format openvino --precision int8 \\
      --calibration-images 'line3/*.png' --out screw-int8
  kanoclip detect line3/ --engine openvino --exported model-ov                        then run it

one graph from RGB in [0, 1] at the run resolution to scores and maps: text features, references and thresholds are
baked in, the batch is dynamic. Needs the export extra: pip install 'kanoclip[export]'.
"""

REFERENCE_EPILOG = """examples:
  kanoclip reference build good_parts/ --out line3.kref --checkpoint runs/mvtec/final
  kanoclip detect line3/ --reference line3.kref --checkpoint runs/mvtec/final
  kanoclip detect line3/ --reference good_parts/ --class-name screw          training-free, references inline

a bank holds the good parts' patch features and what they were made with (backbone fingerprint, resolution, taps,
checkpoint); a bank made for another model is refused. Few-shot maps: 1 - max cosine to the bank, blended with the
zero-shot map (reference_weight, reference_score, reference_augment, reference_max_patches in `kanoclip info`).
"""

KNOWLEDGE_EPILOG = """examples:
  kanoclip knowledge general --model gpt-4o-mini --out knowledge.json
  kanoclip knowledge general bottle screw --base-url http://localhost:11434/v1 --model llama3.1 --out k.json
  kanoclip knowledge images /data/mvtec --base-url http://localhost:8000/v1 --model Llama-3.2-11B-Vision \\
      --out mvtec_vqa.json
  kanoclip knowledge check k.json                     lint a file you wrote or edited (no server)

the package ships a general knowledge base for every class of the field's benchmarks, written by hand (its header says
how); these commands rebuild it with your server, and what the server answers passes the same lint as `check`.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kanoclip",
        description="Zero-shot image anomaly detection with KAnoCLIP on a frozen CLIP.",
        epilog="Run `kanoclip COMMAND --help` for each command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("--version", action="version", version=f"kanoclip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[..., int], str]] = [
        ("info", "print the resolved config and parameter counts", add_model_options, cmd_info, EPILOG),
        ("detect", "score images and write heatmaps", add_detect_options, cmd_detect, DETECT_EPILOG),
        (
            "evaluate",
            "metrics, tables and an HTML report on datasets",
            add_evaluate_options,
            cmd_evaluate,
            EVALUATE_EPILOG,
        ),
        ("train", "train prompts, Bi-CMCI and adapter on auxiliary data", add_train_options, cmd_train, TRAIN_EPILOG),
        ("serve", "an HTTP inspection service with a web page", add_serve_options, cmd_serve, SERVE_EPILOG),
        ("watch", "score hot folders, videos and cameras into the station", add_watch_options, cmd_watch, WATCH_EPILOG),
        ("history", "what the station inspected", add_history_options, cmd_history, HISTORY_EPILOG),
        ("calibrate", "choose image and map thresholds", add_calibrate_options, cmd_calibrate, CALIBRATE_EPILOG),
        ("reference", "few-shot: build a bank of good parts", add_reference_options, cmd_reference, REFERENCE_EPILOG),
        ("export", "ONNX / OpenVINO for CPUs and edge boxes", add_export_options, cmd_export, EXPORT_EPILOG),
        ("reproduce", "the zero-shot protocol end to end", add_reproduce_options, cmd_reproduce, REPRODUCE_EPILOG),
        (
            "knowledge",
            "generate knowledge with an LLM / VQA server",
            add_knowledge_options,
            cmd_knowledge,
            KNOWLEDGE_EPILOG,
        ),
    ]
    for name, help_text, add_options, func, epilog in commands:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_options(p)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.simplefilter("default")
    try:
        return int(args.func(args))
    except KanoclipError as e:
        print(f"kanoclip: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(
            f"kanoclip: error: the disk is full ({e.filename or 'writing outputs'}): free some space and run the same "
            "command again; what was finished is kept (detect resumes where it stopped)",
            file=sys.stderr,
        )
        return EXIT_DISK_FULL
    except KeyboardInterrupt:
        print("kanoclip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
