"""`kanoclip adapt`: fit the model to one product from its good parts alone (#32).

Anomalies with exact masks are synthesized from the good images (`kanoclip.data.synthesis`: CutPaste, CutPaste-scar,
Perlin-noise regions filled with DRAEM's blend), written once as a dataset in the MVTec layout under `RUN/data`
(train) and `RUN/validation`, with real defect images added when given; then the same loop, losses and checkpoints
as `train` run on it (resumable bit for bit, DDP under torchrun), each saved state validated on the held-out good
parts and their synthesized defects (the mean of image and pixel AUROC), and the best step becomes `RUN/final`.

The data is a pure function of the inputs' bytes, the settings and the seed: a resumed run finds the same files (its
manifest says so) or writes them again identically.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kanoclip._files import atomic_write_bytes, make_folders
from kanoclip.data.datasets import DatasetIndex, load_dataset
from kanoclip.data.datasets.base import sample_image, sample_mask
from kanoclip.data.images import decode, is_image_file
from kanoclip.data.inputs import expand_inputs
from kanoclip.data.synthesis import SYNTHESIZERS, synthesize
from kanoclip.errors import ConfigError
from kanoclip.evaluation.metrics import image_auroc
from kanoclip.inference.detector import to_tensor
from kanoclip.knowledge import KnowledgeBase
from kanoclip.model.config import KAnoCLIPConfig, TrainConfig
from kanoclip.model.kanoclip import KAnoCLIP
from kanoclip.training.loop import Validate, train

MANIFEST = "data.json"
SYNTH = "synthesized"  # the defect type of the synthesized images in the written layout
# real defect images without a mask: a folder of their own, since the layout's loader wants a mask for every image of
# a defect folder that has any
UNMASKED = "defect_unmasked"


@dataclass(frozen=True)
class AdaptData:
    """What the synthesized dataset is made of (its manifest: the same inputs and settings, the same files)."""

    class_name: str
    goods: list[str]  # sha256 of each good image, in the order given
    defects: list[str]  # sha256 of each real defect image, then "+" and its mask's when it has one
    textures: list[str]
    kinds: list[str]
    per_image: int
    val_fraction: float
    seed: int


def prepare(
    goods: Sequence[Path],
    out: Path,
    class_name: str,
    kinds: Sequence[str],
    val_fraction: float,
    seed: int,
    textures: Sequence[Path] = (),
    defects: Sequence[Path] = (),
    per_image: int = 2,
) -> tuple[DatasetIndex, DatasetIndex]:
    """The training and validation sets under `out/data` and `out/validation`: written once (into a temporary folder
    renamed into place, so a kill leaves the old set or none), reused while the manifest matches."""
    unknown = sorted(set(kinds) - set(SYNTHESIZERS))
    if unknown or not kinds:
        raise ConfigError(f"--synth takes {', '.join(SYNTHESIZERS)} (comma-separated), got {','.join(kinds)!r}")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    if len(goods) < 2:
        raise ConfigError(f"adapt needs at least 2 good images (some are held out to validate), got {len(goods)}")
    manifest = AdaptData(
        class_name,
        [_sha(p) for p in goods],
        [_sha(p) + (f"+{_sha(_mask_of(p))}" if _mask_of(p).is_file() else "") for p in defects],
        [_sha(p) for p in textures],
        list(kinds),
        per_image,
        val_fraction,
        seed,
    )
    if _manifest(out) != manifest:
        _write(goods, out, manifest, textures, defects)
    return load_dataset(out / "data", "mvtec"), load_dataset(out / "validation", "mvtec")


def _write(
    goods: Sequence[Path], out: Path, manifest: AdaptData, textures: Sequence[Path], defects: Sequence[Path]
) -> None:
    rng = np.random.default_rng(manifest.seed)
    order = rng.permutation(len(goods))
    held = max(1, round(manifest.val_fraction * len(goods)))
    split = {"validation": [goods[i] for i in order[:held]], "data": [goods[i] for i in order[held:]]}
    fills = [decode(p, str(p)) for p in textures] or None
    make_folders(out)
    for name, images in split.items():
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}."))
        root = tmp / manifest.class_name
        for i, path in enumerate(images):
            rgb = decode(path, str(path))
            _png(root / "train" / "good" / f"{i:04d}.png", rgb)  # the layout's normal images (read by no loss)
            _png(root / "test" / "good" / f"{i:04d}.png", rgb)
            for k in range(manifest.per_image):
                image, mask = synthesize(rgb, rng, manifest.kinds, fills)
                _png(root / "test" / SYNTH / f"{i:04d}_{k}.png", image)
                _png(root / "ground_truth" / SYNTH / f"{i:04d}_{k}_mask.png", mask.astype(np.uint8) * 255)
        if name == "data":
            for j, path in enumerate(defects):
                given = _mask_of(path)
                folder = "defect" if given.is_file() else UNMASKED
                shutil.copyfile(path, _folder(root / "test" / folder) / f"{j:04d}{path.suffix.lower()}")
                if given.is_file():
                    shutil.copyfile(given, _folder(root / "ground_truth" / "defect") / f"{j:04d}_mask.png")
        final = out / name
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    atomic_write_bytes(out / MANIFEST, json.dumps(asdict(manifest), indent=1).encode())


def validation_score(data: DatasetIndex, size: int, batch: int = 8) -> Validate:
    """The validation of `train`: the mean of image AUROC and pixel AUROC on the held-out set (normal parts and
    their synthesized defects), at the run resolution; no random number is drawn."""
    samples = data.test
    pixels = torch.stack([to_tensor(sample_image(s), size) for s in samples])
    masks = np.stack([sample_mask(s, size) for s in samples])
    labels = np.array([s.label for s in samples])

    def score(model: KAnoCLIP) -> float:
        device = next(model.parameters()).device
        scores, maps = [], []
        for i in range(0, len(samples), batch):
            out = model(pixels[i : i + batch].to(device))
            scores.append(out.pred_score.float().cpu().numpy())
            maps.append(out.anomaly_map.float().cpu().numpy())
        image = image_auroc(labels, np.concatenate(scores))
        pixel = image_auroc(masks.ravel(), np.concatenate(maps).reshape(len(samples), size, size).ravel())
        return (image + pixel) / 2

    return score


def adapt(
    config: KAnoCLIPConfig,
    train_config: TrainConfig,
    goods: Sequence[str],
    out: str | Path,
    class_name: str,
    kinds: Sequence[str],
    val_fraction: float,
    textures: Sequence[str] = (),
    defects: str | None = None,
    device: str = "auto",
    progress: Callable[[int, int], None] = lambda step, total: None,
) -> Path:
    """`kanoclip adapt`: the data, then `train` with validation; returns `out/final` (the best step's weights).
    `progress(step, total)` is told of each training step."""
    run = Path(out)
    good_files = expand_inputs(list(goods))[0]
    texture_files = expand_inputs(list(textures))[0] if textures else []
    defect_files = (
        sorted(p for p in Path(defects).rglob("*") if is_image_file(p) and not p.stem.endswith("_mask"))
        if defects
        else []
    )
    if defects and not defect_files:
        raise ConfigError(f"--defects {defects}: no images there")
    data, validation = prepare(
        good_files, run, class_name, kinds, val_fraction, train_config.seed, texture_files, defect_files
    )
    print(f"adapt: {len(data.test)} training images, {len(validation.test)} held out for validation ({run})")
    return train(
        config,
        train_config,
        data,
        run,
        KnowledgeBase.load(),
        None,
        device,
        validate=validation_score(validation, config.image_size),
        progress=progress,
    )


def _manifest(out: Path) -> AdaptData | None:
    try:
        document = json.loads((out / MANIFEST).read_text())
        return AdaptData(**document) if (out / "data").is_dir() and (out / "validation").is_dir() else None
    except (OSError, ValueError, TypeError):
        return None


def _mask_of(defect: Path) -> Path:
    """Where a real defect image's mask is: NAME_mask.png beside it."""
    return defect.with_name(f"{defect.stem}_mask.png")


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _folder(path: Path) -> Path:
    make_folders(path)
    return path


def _png(path: Path, array: np.ndarray) -> None:
    make_folders(path.parent)
    Image.fromarray(array).save(path, compress_level=1)  # lossless either way; the default level is ~5x slower
