"""A checkpoint as others get it (#33): its weights and config byte for byte, with a model card (`README.md`), written
to a folder (`write_folder`) or pushed to the Hugging Face Hub as one commit (`push`). The three files are all that
is ever written or sent: never a pickle.

The card's metadata is what the Hub indexes (`library_name: kanoclip`, license, tags, the datasets trained on); its
text says what the checkpoint is, how to run it, what it was trained on, the metrics of a `kanoclip evaluate` run of
these very weights (when one is given) and the command that trains it again.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kanoclip._files import atomic_write_bytes, read_json_object
from kanoclip._version import __version__
from kanoclip.errors import ConfigError
from kanoclip.evaluation.protocol import COLUMNS
from kanoclip.model import checkpoint, hub
from kanoclip.model.config import KAnoCLIPConfig, TrainConfig
from kanoclip.options import flag_of

CARD = "README.md"
SHARED = (*checkpoint.FILES, CARD)  # everything a shared checkpoint holds
PICKLES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")  # formats that can run code when loaded: never written
TRAIN_YAML = "train.yaml"


def write_folder(
    source: str | Path,
    out: str | Path,
    repo_id: str,
    license: str = hub.DEFAULT_LICENSE,
    results: str | Path | None = None,
    datasets: Sequence[str] = (),
) -> Path:
    """`out` as the Hub repository will hold it: model.safetensors and config.json copied from the checkpoint
    `source` (a folder or hf://...), and the card. `out` may exist only empty or holding these same files."""
    name = repo_name(repo_id)
    located = checkpoint.locate(source)
    document = checkpoint.verify(located.folder)  # the weights are the bytes the config recorded
    card = model_card(name.repo_id, document, license, read_results(results, document) if results else None, datasets)
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--local-dir {folder} is a file: name a folder")
    others = sorted(p.name for p in folder.iterdir() if p.name not in SHARED) if folder.is_dir() else []
    if others:
        raise ConfigError(
            f"--local-dir {folder} holds other files ({', '.join(others[:5])}): name an empty or new folder, so that "
            f"it holds exactly {', '.join(SHARED)}"
        )
    for file in checkpoint.FILES:
        atomic_write_bytes(folder / file, (located.folder / file).read_bytes())
    atomic_write_bytes(folder / CARD, str(card).encode())
    return folder


def push(
    source: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    license: str = hub.DEFAULT_LICENSE,
    results: str | Path | None = None,
    datasets: Sequence[str] = (),
) -> hub.Pushed:
    """The folder `write_folder` writes, uploaded as one commit to the model repository `repo_id` (created when
    missing; `private` applies to a new one) on the branch `revision` (default main; created when missing)."""
    name = repo_name(repo_id, revision)
    with tempfile.TemporaryDirectory(prefix="kanoclip-push-") as tmp:
        folder = write_folder(source, Path(tmp) / "model", name.repo_id, license, results, datasets)
        message = f"kanoclip push ({__version__}): weights, config and model card"
        return hub.upload(folder, SHARED, name.repo_id, message, private, name.revision)


def repo_name(repo_id: str, revision: str | None = None) -> hub.HubName:
    """REPO_ID as `push` takes it (ORG/NAME, with or without hf://), checked as the Hub would."""
    bare = repo_id.removeprefix(hub.SCHEME)
    if "@" in bare:
        raise ConfigError(f"{repo_id!r}: give the repository as ORG/NAME and the branch with --revision")
    return hub.parse(f"{hub.SCHEME}{bare}" + (f"@{revision}" if revision is not None else ""))


def read_results(path: str | Path, document: dict[str, Any]) -> dict[str, Any]:
    """A `kanoclip evaluate` run's results.json, refused unless it measured these very weights."""
    results = read_json_object(
        Path(path), ConfigError, "--results takes the results.json `kanoclip evaluate` writes", "evaluate again"
    )
    measured = (results.get("info") or {}).get("checkpoint_sha256")
    if not isinstance(results.get("means"), dict) or measured is None:
        raise ConfigError(f"{path} is not the results.json of `kanoclip evaluate --checkpoint ...`")
    if measured != document.get("weights_sha256"):
        raise ConfigError(
            f"{path} measured other weights (sha256 {measured[:12]}…, this checkpoint's is "
            f"{str(document.get('weights_sha256'))[:12]}…): evaluate this checkpoint, then push with its results"
        )
    return results


def model_card(
    repo_id: str,
    document: dict[str, Any],
    license: str = hub.DEFAULT_LICENSE,
    results: dict[str, Any] | None = None,
    datasets: Sequence[str] = (),
) -> Any:
    """The model card (huggingface_hub's `ModelCard`): metadata from `ModelCardData`, then the text."""
    from huggingface_hub import ModelCard, ModelCardData

    section = document.get("training")
    training: dict[str, Any] | None = section if isinstance(section, dict) else None
    trained_on = list(datasets) or _trained_on(training)
    data = ModelCardData(library_name=hub.LIBRARY, license=license, tags=list(hub.TAGS), datasets=trained_on or None)
    body = [
        _about(repo_id, document),
        _use(repo_id),
        _training(training, trained_on),
        _evaluation(results, document),
        _reproduce(training),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(part for part in body if part))


def _trained_on(training: dict[str, Any] | None) -> list[str]:
    """The dataset folder's name of a `kanoclip train` run; none for `kanoclip adapt` (it validates each step: its
    data is the product's own good parts with synthesized defects, kept in its run folder) or without a run."""
    if not training or "data" not in training or "best" in training:
        return []
    return [Path(str(training["data"])).name]


def _about(repo_id: str, document: dict[str, Any]) -> str:
    model = document.get("model") or {}
    backbone = document.get("backbone") or {}
    random = model.get("pretrained") == "none"
    lines = [
        f"# {repo_id.split('/')[-1]}\n",
        "A kanoclip checkpoint for zero-shot image anomaly detection "
        "(KAnoCLIP: a frozen CLIP with V-V attention and knowledge-driven prompts). It holds the learnable weights "
        f"only (`{checkpoint.WEIGHTS}`, safetensors) and the full run config (`{checkpoint.CONFIG}`); the frozen "
        f"CLIP backbone, `{model.get('backbone')}` with weights `{model.get('pretrained')}` at "
        f"{model.get('image_size')} px, is not copied: kanoclip builds it and refuses other weights (fingerprint "
        f"`{backbone.get('fingerprint')}`).\n",
    ]
    if random:
        lines.append(
            "**Random CLIP weights** (`pretrained: none`): a test or smoke-run checkpoint; its outputs measure the "
            "pipeline, not the method.\n"
        )
    calibration = document.get("calibration")
    if isinstance(calibration, dict):
        lines.append(
            f"Calibrated thresholds: image {_number(calibration.get('image_threshold'))}, pixel "
            f"{_number(calibration.get('pixel_threshold'))} (set on the publisher's images: calibrate on your own "
            "with `kanoclip calibrate`).\n"
        )
    return "\n".join(lines)


def _use(repo_id: str) -> str:
    return (
        "## Use\n\n"
        "With kanoclip installed:\n\n"
        "```bash\n"
        f"kanoclip detect IMAGES --checkpoint hf://{repo_id} --out results     # scores.csv, maps, overlays\n"
        f"kanoclip pull hf://{repo_id}          # fetch ahead; then HF_HUB_OFFLINE=1 runs from the cache\n"
        "```\n\n"
        "```python\n"
        "from kanoclip import Detector, RunConfig\n\n"
        f'detector = Detector.from_config(RunConfig(checkpoint="hf://{repo_id}"))\n'
        "```\n\n"
        f"`hf://{repo_id}@REVISION` picks a branch, tag or commit; run.json records the commit used.\n"
    )


def _training(training: dict[str, Any] | None, datasets: list[str]) -> str:
    if not training:
        return "## Training\n\nThe checkpoint records no training run.\n"
    train = training.get("train") or {}
    lines = ["## Training\n"]
    if "best" in training:
        best = training["best"]
        lines.append(
            "Adapted to one product with `kanoclip adapt`: its good parts with synthesized defects. The best step "
            f"({best.get('step')}) was kept by its validation score {_number(best.get('score'))} (the mean of image "
            "and pixel AUROC on held-out good parts and their synthesized defects: not a benchmark).\n"
        )
    elif datasets:
        lines.append(f"Trained with `kanoclip train` on the test split of {', '.join(f'`{d}`' for d in datasets)}.\n")
    facts = {"steps": training.get("steps"), **{k: train.get(k) for k in ("epochs", "batch_size", "seed")}}
    facts |= {k: train.get(k) for k in ("lr_prompts", "lr_modules", "precision", "max_steps")}
    lines.append(", ".join(f"{k}: {v}" for k, v in facts.items() if v is not None) + ".\n")
    return "\n".join(lines)


def _evaluation(results: dict[str, Any] | None, document: dict[str, Any]) -> str:
    if results is None:
        return (
            "## Evaluation\n\nNo evaluation was published with this checkpoint: measure it on your data with "
            "`kanoclip evaluate DATASET --checkpoint ...`.\n"
        )
    info = results.get("info") or {}
    means: dict[str, dict[str, Any]] = results["means"]
    shown = [(key, label) for key, label in COLUMNS if any(_finite(m.get(key)) for m in means.values())]
    classes = {name: 0 for name in means}
    for row in results.get("classes") or []:
        if row.get("dataset") in classes:
            classes[row["dataset"]] += 1
    lines = [
        "## Evaluation\n",
        f"`kanoclip evaluate` on these weights (sha256 `{info.get('checkpoint_sha256')}`): the mean over each "
        f"dataset's classes, in %; AUPRO {info.get('aupro', 'exact')}"
        + (f"; {info['few_shot']['shots']}-shot" if isinstance(info.get("few_shot"), dict) else "; zero-shot")
        + ".\n",
        "| dataset | classes | " + " | ".join(label for _, label in shown) + " |",
        "|---|---|" + "---|" * len(shown),
    ]
    for dataset in sorted(means):
        cells = " | ".join(_percent(means[dataset].get(key)) for key, _ in shown)
        lines.append(f"| {dataset} | {classes[dataset]} | {cells} |")
    if info.get("random_weights") or (document.get("model") or {}).get("pretrained") == "none":
        lines.append("\nRandom CLIP weights: these numbers measure the pipeline, not the method.")
    return "\n".join(lines) + "\n"


def train_yaml(training: dict[str, Any]) -> dict[str, Any]:
    """The `--config` file that trains the same model again: the model fields that differ from the defaults, and
    every training option (the flags of `kanoclip train`'s training section)."""
    default = KAnoCLIPConfig().to_dict()
    model = {k: v for k, v in (training.get("model") or {}).items() if k in default and v != default[k]}
    train = training.get("train") or {}
    flagged = [f.name for f in dataclasses.fields(TrainConfig) if flag_of(f) and f.name in train]
    return {"model": model, "training": {name: train[name] for name in flagged}}


def _reproduce(training: dict[str, Any] | None) -> str:
    if not training or "model" not in training:
        return ""
    config = yaml.safe_dump(train_yaml(training), sort_keys=False)
    knowledge = " --image-knowledge VQA.json" if (training.get("model") or {}).get("kd_use_vqa") else ""
    if "best" in training:
        command = f"kanoclip adapt GOOD_IMAGES --class-name NAME --config {TRAIN_YAML} --out runs/adapt"
        note = "the good images, class name and synthesized defects are the publisher's and are not recorded"
    else:
        command = f"kanoclip train DATASET{knowledge} --config {TRAIN_YAML} --out runs/train"
        note = "DATASET is the folder named above; the general knowledge is the shipped base unless --knowledge"
    train = training.get("train") or {}
    betas = TrainConfig().betas
    if train.get("betas") is not None and tuple(train["betas"]) != tuple(betas):
        note += f"; Adam's betas were {train['betas']} (kanoclip's default is {list(betas)})"
    return f"## Reproduce\n\nWith `{TRAIN_YAML}`:\n\n```yaml\n{config}```\n\n```bash\n{command}\n```\n\n({note}.)\n"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}" if _finite(value) else "—"


def _number(value: Any) -> str:
    return f"{value:.4f}" if _finite(value) else "—"
