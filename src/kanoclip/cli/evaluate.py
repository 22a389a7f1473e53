"""`kanoclip evaluate` and `kanoclip reproduce`: the protocol's metrics and tables on datasets."""

from __future__ import annotations

from dataclasses import dataclass

from kanoclip.cli.common import MODEL, MODEL_ONLY, detector, model_config, report_unreadable, run_config, run_section
from kanoclip.cli.flags import Command, Parsed, Section
from kanoclip.cli.train import TRAIN_MODEL
from kanoclip.errors import ConfigError
from kanoclip.inference.config import CHECKPOINT_CHANGES, RunConfig
from kanoclip.model.config import TrainConfig
from kanoclip.options import flag_name, option


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError as e:
        raise ConfigError(f"{flag} takes whole numbers separated by commas, got {text!r}") from e


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions:
    datasets: tuple[str, ...] = option(positional=True, metavar="DIR", help="dataset folders in any known layout")
    layout: str | None = option(None, help="the layout of every DIR, when detection is ambiguous (kolektor-thirds)")
    out: str = option("evaluation", metavar="DIR", help="output folder")
    cases: int = option(3, help="best and worst images shown per class in the report")
    aupro: str = option(
        "exact",
        choices=("exact", "anomalyclip"),
        help="exact over all thresholds, or the 200-threshold variant of published tables",
    )
    shots: int = option(
        0, metavar="K", help="few-shot: K normal train images of each class as references (0: zero-shot)"
    )
    shot_seeds: str = option(
        "0,1,2", metavar="S,S,...", help="few-shot: one draw of references per seed; tables report mean ± std"
    )


def evaluate(parsed: Parsed) -> int:
    from kanoclip.data.datasets import load_dataset
    from kanoclip.evaluation.defect_typing import markdown_typing
    from kanoclip.evaluation.protocol import evaluate, markdown_table
    from kanoclip.inference.distributed import init_distributed

    o, run = parsed.get(EvaluateOptions), parsed.get(RunConfig)
    seeds = list(_ints(o.shot_seeds, "--shot-seeds"))
    if o.shots < 0 or (o.shots and not seeds):
        raise ConfigError("--shots must be >= 0, with at least one --shot-seeds value")
    place = init_distributed(run.device)  # under torchrun: images sharded over ranks, metrics on rank 0
    indices = [load_dataset(path, o.layout) for path in o.datasets]
    for index in indices:
        if place.main:
            print(index.summary())
    det = detector(parsed)
    info = {**det.describe(), "aupro": o.aupro, "datasets": [str(i.root) for i in indices]}
    info.pop("text")  # per class in results.json: training-free text follows each class
    if o.shots:
        info["few_shot"] = {"shots": o.shots, "seeds": seeds}
    if det.typer is not None:  # every true defect is typed, whatever its score: no threshold needed
        typed = "every true defect of a class whose layout names 2+ types, whatever its score"
        info["defect_typing"] = {**det.typer.describe(), "types": det.typer.listed or "the layout's", "typed": typed}
    if place.world > 1:
        info["processes"] = place.world
    results = evaluate(det, indices, o.out, o.cases, o.aupro, info, o.shots, seeds)
    if not place.main:
        return 0
    print(markdown_table(results))
    if typing := markdown_typing(results):
        print(f"defect typing (true defects typed among the layout's types), in %:\n{typing}")
    if info["random_weights"]:
        print("note: random CLIP weights: these numbers measure the pipeline, not the method")
    print(f"tables and report in {o.out}/ (results.md, results.csv, results.json, report.html)")
    return report_unreadable([reason for r in results for reason in r.unreadable])


@dataclass(frozen=True, kw_only=True)
class ReproduceOptions:
    data_root: str = option(metavar="DIR", help="a folder holding the datasets")
    out: str = option("runs/reproduce", metavar="DIR", help="run folder")
    image_knowledge: tuple[str, ...] = option(
        (), metavar="DATASET=FILE", help='per-image VQA knowledge of a training set, e.g. "MVTec AD=mvtec_vqa.json"'
    )
    shots: str = option(
        "", metavar="K,K,...", help="also a few-shot table: K normal train images per class as references, e.g. 1,2,4"
    )
    shot_seeds: str = option("0,1,2", metavar="S,S,...", help="few-shot draws")
    knowledge: str | None = option(None, metavar="FILE", help="general knowledge JSON (default: the shipped base)")
    device: str = option("auto", help="auto, cpu, cuda (under torchrun: one GPU per process)")
    checkpoints: tuple[str, ...] = option(
        (),
        name="--checkpoint",
        metavar="CKPT",
        help="evaluate this trained model instead of training (repeat for more): a folder, hf://ORG/NAME[@REV], or "
        "AnomalyCLIP's published prompts anomalyclip:trained-on-visa / anomalyclip:trained-on-mvtec; each runs on "
        "the datasets the protocol gives the dataset it was trained on",
    )


# With --checkpoint nothing is trained: these still apply (evaluation runs with the training's batch and precision).
EVALUATION_FIELDS = {"training": ("batch_size", "num_workers", "precision"), "model": CHECKPOINT_CHANGES}


def reproduce(parsed: Parsed) -> int:
    from kanoclip.evaluation.reproduce import reproduce
    from kanoclip.knowledge.base import KnowledgeBase

    o, train = parsed.get(ReproduceOptions), parsed.get(TrainConfig)
    if o.checkpoints:
        return _reproduce_checkpoints(parsed, o, train)
    config = model_config(parsed)
    vqa = {}
    for item in o.image_knowledge:
        name, sep, path = item.partition("=")
        if not sep:
            raise ConfigError(f"--image-knowledge expects DATASET=FILE, got {item!r}")
        vqa[name] = path
    table = reproduce(
        o.data_root,
        o.out,
        config,
        train,
        vqa,
        o.device,
        train.batch_size,  # evaluation runs with the training's batch, workers and precision
        train.num_workers,
        train.precision,
        _ints(o.shots, "--shots"),
        _ints(o.shot_seeds, "--shot-seeds"),
        KnowledgeBase.load(o.knowledge) if o.knowledge else None,
    )
    print(table)
    return 0


def _reproduce_checkpoints(parsed: Parsed, o: ReproduceOptions, train: TrainConfig) -> int:
    from kanoclip.evaluation.reproduce import reproduce_checkpoints

    chosen = [
        _flag_of(parsed, key, name)
        for key, names in parsed.chosen.items()
        if key in EVALUATION_FIELDS
        for name in names
        if name not in EVALUATION_FIELDS[key]
    ]
    chosen += [
        flag for flag, given in (("--image-knowledge", o.image_knowledge), ("--knowledge", o.knowledge)) if given
    ]
    chosen += ["--preset"] if run_config(parsed).model_file else []
    if chosen:
        raise ConfigError(
            f"{', '.join(chosen)} cannot be used with --checkpoint: nothing is trained, and a checkpoint keeps its own "
            "config (only --backbone, --pretrained and --image-size may point elsewhere)"
        )
    table = reproduce_checkpoints(
        o.data_root,
        o.out,
        o.checkpoints,
        dict(parsed.values["model"]),
        o.device,
        train.batch_size,
        train.num_workers,
        train.precision,
        _ints(o.shots, "--shots"),
        _ints(o.shot_seeds, "--shot-seeds"),
    )
    print(table)
    return 0


def _flag_of(parsed: Parsed, key: str, name: str) -> str:
    field = next((f for f in parsed.section(key).fields() if f.name == name), None)
    return flag_name(field) if field is not None else f"--set {name}"


EVALUATE_EPILOG = """examples:
  kanoclip evaluate ../shared/data/MVTec_AD --preset kanoclip-tiny --out eval     offline smoke run
  kanoclip evaluate /data/visa /data/mpdd --checkpoint runs/mvtec/final --out eval/
  kanoclip evaluate /data/KolektorSDD --layout kolektor-thirds --aupro anomalyclip
  kanoclip evaluate /data/mvtec --shots 4 --shot-seeds 0,1,2        few-shot: 4 train images per class as references

writes results.md, results.csv, results.json (per class, per defect type and mean: image AUROC/AP/F1-max, pixel
AUROC/AP/F1-max, AUPRO) and a self-contained report.html: per class ROC and PR curves, a score histogram with the
thresholds, the per-defect table and the best and worst images; with --shots, error bars over the seeds. Where a
class's layout names two or more defect types (MVTec AD's test/<type>/), every anomalous image is typed among them
(or --defect-types): typing accuracy, balanced accuracy and a confusion matrix per class in the tables and the
report, each image's prediction in typing.csv (--no-defect-typing skips it).
"""

REPRODUCE_EPILOG = """examples:
  kanoclip reproduce --data-root /data --general-knowledge-only
  kanoclip reproduce --data-root /data --general-knowledge-only --shots 1,2,4      plus the few-shot table
  kanoclip reproduce --data-root /data --image-knowledge "MVTec AD=mvtec_vqa.json" --image-knowledge "VisA=visa.json"
  kanoclip reproduce --data-root /d --checkpoint anomalyclip:trained-on-visa --checkpoint anomalyclip:trained-on-mvtec
  kanoclip reproduce --data-root /data --checkpoint runs/mvtec/final --shots 1,2,4        a trained model, no training

looks for folders named like mvtec_anomaly_detection, visa, mpdd, btad, KolektorSDD, dagm, dtd-synthetic, headct,
brainmri, br35h, isic, cvc-colondb, cvc-clinicdb, kvasir, endo, tn3k; trains on MVTec AD for every other dataset and
on VisA for MVTec AD; writes reproduce.md beside the published numbers. With --checkpoint it trains nothing: each
checkpoint is evaluated on the datasets the protocol gives the dataset its config.json names (every one found when it
names none); anomalyclip:NAME fetches AnomalyCLIP's published prompts once and converts them (`kanoclip convert`).
"""

EVALUATE = Command(
    "evaluate",
    "metrics, tables and an HTML report on datasets",
    evaluate,
    (
        Section("evaluate", EvaluateOptions),
        run_section(skip=("image_threshold",), defaults={"precision": "fp32"}),
        MODEL,
    ),
    EVALUATE_EPILOG,
)
REPRODUCE = Command(
    "reproduce",
    "the zero-shot protocol end to end",
    reproduce,
    (
        Section("reproduce", ReproduceOptions),
        Section("training", TrainConfig, title="training (defaults: the paper's recipe)"),
        TRAIN_MODEL,
        run_section(only=MODEL_ONLY),
    ),
    REPRODUCE_EPILOG,
)
