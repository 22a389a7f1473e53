"""`kanoclip reproduce`: the zero-shot protocol end to end on whatever datasets a folder holds (SPEC §7, I16).

Train on the MVTec AD test split and evaluate every other dataset; train on the VisA test split and evaluate MVTec
AD. Or, with checkpoints given (folders, `hf://` names, AnomalyCLIP's published prompts), train nothing: each is
evaluated on the datasets the protocol gives the dataset it was trained on. The table puts our numbers beside
AnomalyCLIP's and the few published KAnoCLIP cells (SPEC §2).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kanoclip._files import atomic_write_bytes
from kanoclip.data.datasets import DatasetIndex, load_dataset
from kanoclip.errors import DatasetError, KnowledgeError
from kanoclip.evaluation.protocol import ClassResult, evaluate, mean_row, std_row
from kanoclip.inference.config import RunConfig
from kanoclip.inference.detector import Detector
from kanoclip.knowledge import KnowledgeBase, load_image_knowledge
from kanoclip.knowledge.base import ImageKnowledge
from kanoclip.model import checkpoint, published
from kanoclip.model.config import KAnoCLIPConfig, TrainConfig
from kanoclip.training.loop import train

# dataset key -> the folder names it goes by, normalised (lower case, without - _ and spaces)
DATASETS: dict[str, tuple[str, ...]] = {
    "MVTec AD": ("mvtec", "mvtecad", "mvtecanomalydetection"),
    "VisA": ("visa", "visapytorch"),
    "MPDD": ("mpdd",),
    "BTAD": ("btad",),
    "SDD": ("sdd", "kolektorsdd", "kolektor"),
    "DAGM": ("dagm", "dagm2007"),
    "DTD-Synthetic": ("dtdsynthetic", "dtd"),
    "HeadCT": ("headct",),
    "BrainMRI": ("brainmri", "braintumordataset"),
    "Br35H": ("br35h",),
    "ISIC": ("isic", "isic2016"),
    "CVC-ColonDB": ("cvccolondb", "colondb"),
    "CVC-ClinicDB": ("cvcclinicdb", "clinicdb"),
    "Kvasir": ("kvasir", "kvasirseg"),
    "Endo": ("endo",),
    "TN3K": ("tn3k",),
}

# SPEC §2: AnomalyCLIP (image AUROC, image AP, pixel AUROC, PRO) and the KAnoCLIP cells found (same order; None =
# not published). Medical sets report image or pixel metrics only.
ANOMALYCLIP: dict[str, tuple[float | None, ...]] = {
    "MVTec AD": (91.5, 96.2, 91.1, 81.4),
    "VisA": (82.1, 85.4, 95.5, 87.0),
    "MPDD": (77.0, 82.0, 96.5, 88.7),
    "BTAD": (88.3, 87.3, 94.2, 74.8),
    "SDD": (84.7, 80.0, 90.6, 67.8),
    "DAGM": (97.5, 92.3, 95.6, 91.0),
    "DTD-Synthetic": (93.5, 97.0, 97.9, 92.3),
    "HeadCT": (93.4, 91.6, None, None),
    "BrainMRI": (90.3, 92.2, None, None),
    "Br35H": (94.6, 94.7, None, None),
    "ISIC": (None, None, 89.7, 78.4),
    "CVC-ColonDB": (None, None, 81.9, 71.3),
    "CVC-ClinicDB": (None, None, 82.9, 67.8),
    "Kvasir": (None, None, 78.9, 45.6),
    "Endo": (None, None, 84.1, 63.6),
    "TN3K": (None, None, 81.5, 50.4),
}
KANOCLIP_PAPER: dict[str, tuple[float | None, ...]] = {
    "MPDD": (77.8, None, 98.3, None),
    "SDD": (86.2, None, None, None),  # level not stated on the leaderboard scrape; most likely image AUROC
}
TABLE_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "aupro")

# SPEC §9: published few-shot (image AUROC, pixel AUROC) by (dataset, k), with the method; protocols differ.
FEW_SHOT_PUBLISHED: dict[tuple[str, int], list[tuple[str, float | None, float | None]]] = {
    ("MVTec AD", 1): [("WinCLIP+", 93.1, 95.2), ("AnomalyDINO", 96.5, 96.3)],
    ("MVTec AD", 4): [("AnomalyDINO", 97.6, 96.7), ("AdaptCLIP", 96.6, None)],
    ("VisA", 1): [("WinCLIP+", 83.8, 96.4), ("AnomalyDINO", 85.6, 97.5)],
    ("VisA", 4): [("AnomalyDINO", 91.3, 98.0), ("AdaptCLIP", 93.1, None)],
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_ ]", "", name.lower())


def dataset_key(name: str) -> str | None:
    """The protocol's name of a dataset called `name` (a folder name, "mvtec", "VisA", ...), or None."""
    normal = _normalise(name)
    return next((key for key, aliases in DATASETS.items() if normal == _normalise(key) or normal in aliases), None)


def trained_on(document: Mapping[str, Any]) -> str | None:
    """The dataset a checkpoint was trained on, as its config.json tells it: a conversion's record, else the
    folder `kanoclip train` trained on; None when it does not say or names no dataset of the protocol."""
    converted = document.get("converted_from") or {}
    training = document.get("training") or {}
    for said in (converted.get("trained_on"), Path(str(training.get("data") or "")).name):
        key = dataset_key(said) if isinstance(said, str) and said else None
        if key is not None:
            return key
    return None


def evaluated_by(trained: str | None, found: Sequence[str]) -> list[str]:
    """The datasets the protocol evaluates a model trained on `trained` on: MVTec AD for VisA, else every other."""
    if trained == "VisA":
        return [name for name in found if name == "MVTec AD"]
    return [name for name in found if name != trained]


def find_datasets(root: str | Path) -> dict[str, Path]:
    """The protocol's datasets among the sub-folders of `root`, by their usual folder names."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetError(f"--data-root {base} is not a folder")
    found = {}
    for child in sorted(p for p in base.iterdir() if p.is_dir()):
        for name, aliases in DATASETS.items():
            if _normalise(child.name) in aliases and name not in found:
                found[name] = child
    if not found:
        known = ", ".join(f"{k} ({v[0]})" for k, v in DATASETS.items())
        raise DatasetError(f"no dataset of the protocol found under {base}; expected folders named like: {known}")
    return found


@dataclass
class ProtocolRun:
    train_on: str
    evaluate: list[str]


def plan(found: dict[str, Path]) -> list[ProtocolRun]:
    runs = []
    if "MVTec AD" in found:
        others = [name for name in found if name != "MVTec AD"]
        if others:
            runs.append(ProtocolRun("MVTec AD", others))
    if "VisA" in found and "MVTec AD" in found:
        runs.append(ProtocolRun("VisA", ["MVTec AD"]))
    if not runs:
        raise DatasetError(
            f"found {sorted(found)}, but the protocol needs MVTec AD (to train for every other dataset) plus at least "
            "one dataset to evaluate, or VisA and MVTec AD"
        )
    return runs


def check_inputs(
    runs: list[ProtocolRun], config: KAnoCLIPConfig, image_knowledge: dict[str, str]
) -> dict[str, dict[str, ImageKnowledge]]:
    """Every training set's VQA file named, readable and valid (or KD on general knowledge only); unknown names
    are an error. Returns the loaded files by training set."""
    training_sets = {run.train_on for run in runs}
    unknown = sorted(set(image_knowledge) - training_sets)
    if unknown:
        raise KnowledgeError(
            f"--image-knowledge names {unknown}, which the protocol does not train on (it trains on "
            f"{sorted(training_sets)})"
        )
    if config.kd_use_vqa:
        missing = sorted(training_sets - set(image_knowledge))
        if missing:
            raise KnowledgeError(
                f"no per-image (VQA) knowledge for the training set(s) {missing}: pass "
                + " ".join(f'--image-knowledge "{name}=FILE"' for name in missing)
                + " (written by `kanoclip knowledge images`), or --general-knowledge-only"
            )
    return {name: load_image_knowledge(path) for name, path in image_knowledge.items()}


def comparison_table(results: dict[str, list[ClassResult]]) -> str:
    """Markdown: per dataset our (I-AUROC, I-AP, P-AUROC, AUPRO) beside AnomalyCLIP's and KAnoCLIP's."""

    def cells(values: tuple[float | None, ...]) -> str:
        return " | ".join("—" if v is None or math.isnan(v) else f"{v:.1f}" for v in values)

    lines = [
        "| dataset | trained on | ours I-AUROC | I-AP | P-AUROC | AUPRO | AnomalyCLIP I-AUROC | I-AP | P-AUROC | PRO "
        "| KAnoCLIP (paper) I-AUROC | I-AP | P-AUROC | PRO |",
        "|" + "---|" * 14,
    ]
    for key, group in results.items():
        dataset, trained_on = key.split("|")
        means = mean_row(group)
        ours = tuple(100 * means[m] for m in TABLE_METRICS)
        blank = (None, None, None, None)
        lines.append(
            f"| {dataset} | {trained_on} | {cells(ours)} | {cells(ANOMALYCLIP.get(dataset, blank))} | "
            f"{cells(KANOCLIP_PAPER.get(dataset, blank))} |"
        )
    return "\n".join(lines) + "\n"


def few_shot_table(results: dict[str, list[ClassResult]]) -> str:
    """Markdown: per dataset and k our mean ± std over seeds (I-AUROC, P-AUROC) beside published few-shot numbers."""

    def cell(mean: float, std: float) -> str:
        return "—" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"

    lines = ["| dataset | trained on | k | ours I-AUROC | ours P-AUROC | published (method: I-AUROC / P-AUROC) |"]
    lines.append("|" + "---|" * 6)
    for key, group in results.items():
        dataset, trained_on, k = key.split("|")
        means, stds = mean_row(group), std_row(group)
        published = "; ".join(
            f"{method}: {i if i is not None else '—'} / {p if p is not None else '—'}"
            for method, i, p in FEW_SHOT_PUBLISHED.get((dataset, int(k)), [])
        )
        lines.append(
            f"| {dataset} | {trained_on} | {k} | {cell(means['image_auroc'], stds['image_auroc'])} | "
            f"{cell(means['pixel_auroc'], stds['pixel_auroc'])} | {published or '—'} |"
        )
    return "\n".join(lines) + "\n"


def reproduce(
    data_root: str | Path,
    out_dir: str | Path,
    config: KAnoCLIPConfig,
    train_config: TrainConfig,
    image_knowledge: dict[str, str] | None = None,
    device: str = "auto",
    batch_size: int = 8,
    workers: int = 2,
    precision: str = "fp32",
    shots: tuple[int, ...] = (),
    seeds: tuple[int, ...] = (0, 1, 2),
    knowledge: KnowledgeBase | None = None,
) -> str:
    """Run every training and evaluation the data allows; returns (and writes) the comparison table. Every input
    is checked before the first training starts, not hours later. `knowledge`: the general knowledge every training
    uses (None: the shipped base)."""
    out = Path(out_dir)
    found = find_datasets(data_root)
    indices: dict[str, DatasetIndex] = {name: load_dataset(path) for name, path in found.items()}
    for name, index in indices.items():
        print(f"[{name}] {index.summary()}")
    runs = plan(found)
    vqa = check_inputs(runs, config, image_knowledge or {})
    results: dict[str, list[ClassResult]] = {}
    few_shot: dict[str, list[ClassResult]] = {}
    for run in runs:
        print(f"== train on {run.train_on}, then evaluate {', '.join(run.evaluate)}")
        final = train(
            config,
            train_config,
            indices[run.train_on],
            out / f"train_{_normalise(run.train_on)}",
            knowledge,
            image_knowledge=vqa.get(run.train_on),
            device=device,
        )
        detector = Detector.from_config(
            RunConfig(checkpoint=str(final), device=device, precision=precision, batch_size=batch_size, workers=workers)
        )
        info = {"trained_on": run.train_on, "checkpoint": str(final), "model": detector.describe()["model"]}
        _evaluate_run(detector, run.train_on, run.evaluate, indices, out, info, shots, seeds, results, few_shot)
    return _write_table(out, results, few_shot, seeds, config.pretrained == "none")


def _evaluate_run(
    detector: Detector,
    label: str,
    names: Sequence[str],
    indices: Mapping[str, DatasetIndex],
    out: Path,
    info: dict[str, Any],
    shots: Sequence[int],
    seeds: Sequence[int],
    results: dict[str, list[ClassResult]],
    few_shot: dict[str, list[ClassResult]],
) -> None:
    """One model on the datasets `names`: zero-shot rows, then the few-shot rows where a train split exists."""
    folder = re.sub(r"[^a-z0-9]+", "", label.lower()) or "model"
    for name in names:
        where = out / f"eval_{_normalise(name)}_from_{folder}"
        results[f"{name}|{label}"] = evaluate(detector, [indices[name]], where, aupro_method="anomalyclip", info=info)
        if not indices[name].train:
            if shots:
                print(f"   {name}: no normal train images, so no few-shot rows")
            continue
        for k in shots:
            few_shot[f"{name}|{label}|{k}"] = evaluate(
                detector, [indices[name]], Path(f"{where}_{k}shot"), 0, "anomalyclip", info, k, seeds
            )


def _write_table(
    out: Path,
    results: dict[str, list[ClassResult]],
    few_shot: dict[str, list[ClassResult]],
    seeds: Sequence[int],
    random_weights: bool,
    models: str = "",
) -> str:
    """reproduce.md: the note, our table beside the published numbers and the few-shot table; returns its text."""
    table = comparison_table(results)
    if few_shot:
        table += (
            f"\nFew-shot (SPEC §9): k normal train images per class as references, mean ± std over seeds "
            f"{list(seeds)}; published numbers are the sources' own (protocols differ).\n\n" + few_shot_table(few_shot)
        )
    note = (
        "Metrics in %, mean over classes; AUPRO with the 200-threshold variant of published tables. AnomalyCLIP and "
        "KAnoCLIP columns: published numbers (KANOCLIP_SPEC.md §2), not re-run.\n" + models
    )
    if random_weights:
        note += "RANDOM CLIP weights (pretrained=none): our columns measure the pipeline, not the method.\n"
    atomic_write_bytes(out / "reproduce.md", (note + "\n" + table).encode())
    return note + "\n" + table


def reproduce_checkpoints(
    data_root: str | Path,
    out_dir: str | Path,
    checkpoints: Sequence[str],
    changes: Mapping[str, Any] | None = None,
    device: str = "auto",
    batch_size: int = 8,
    workers: int = 2,
    precision: str = "fp32",
    shots: tuple[int, ...] = (),
    seeds: tuple[int, ...] = (0, 1, 2),
) -> str:
    """The protocol's evaluations of trained checkpoints, no training: each checkpoint (a folder, `hf://ORG/NAME`,
    or published prompts such as `anomalyclip:trained-on-visa`) on the datasets the protocol gives the dataset its
    config.json says it was trained on (every dataset found when it does not say). `changes`: where the frozen CLIP
    is (backbone, pretrained, image_size). Returns (and writes) the comparison table."""
    out = Path(out_dir)
    found = find_datasets(data_root)
    indices: dict[str, DatasetIndex] = {}
    results: dict[str, list[ClassResult]] = {}
    few_shot: dict[str, list[ClassResult]] = {}
    models, random_weights = "", False
    for name in checkpoints:
        resolved = published.resolve_checkpoint(name, changes)  # published prompts: fetched and converted once
        detector = Detector.from_config(
            RunConfig(
                checkpoint=resolved,
                model_changes=tuple((changes or {}).items()),
                device=device,
                precision=precision,
                batch_size=batch_size,
                workers=workers,
            )
        )
        folder = detector.checkpoint or Path(resolved)
        trained = trained_on(checkpoint.read_document(folder))
        names = evaluated_by(trained, list(found))
        if not names:
            raise DatasetError(
                f"{name} was trained on {trained}; the protocol evaluates it on "
                f"{'MVTec AD' if trained == 'VisA' else 'the other datasets'}, and {data_root} holds only "
                f"{sorted(found)}"
            )
        label = (trained or f"unknown: {name}").replace("|", "/")
        if any(key.endswith(f"|{label}") for key in results):
            label += f" [{checkpoints.index(name) + 1}]"  # two checkpoints trained on the same dataset
        print(f"== {name}: trained on {trained or 'an unknown dataset'}; evaluate {', '.join(names)}")
        for dataset in names:
            if dataset not in indices:
                indices[dataset] = load_dataset(found[dataset])
                print(f"[{dataset}] {indices[dataset].summary()}")
        described = detector.describe()
        info = {"trained_on": trained, "checkpoint": name, "model": described["model"]}
        _evaluate_run(detector, label, names, indices, out, info, shots, seeds, results, few_shot)
        models += f"Checkpoint {name} ({folder}): trained on {trained or 'an unknown dataset'}, not re-trained here.\n"
        random_weights = random_weights or bool(described["random_weights"])
    return _write_table(out, results, few_shot, seeds, random_weights, models)
