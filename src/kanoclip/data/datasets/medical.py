"""Medical and generic folder layouts: HeadCT, yes/no sets (BrainMRI, Br35H), ISIC, BMAD, image/mask folders
(CVC-ColonDB, CVC-ClinicDB, Kvasir, TN3K, Endo, and anyone's `images/` + `masks/`) (SPEC §5)."""

from __future__ import annotations

import csv
from pathlib import Path

from kanoclip.data.datasets.base import NORMAL_NAMES, DatasetIndex, Sample, images_in, match_masks, single_child_with
from kanoclip.data.images import read_mask
from kanoclip.data.inputs import mask_stem
from kanoclip.errors import DatasetError

# -- HeadCT raw: labels.csv (id, hemorrhage) + head_ct/NNN.png --------------------------------------------------------


def matches_headct(root: Path) -> bool:
    return (root / "labels.csv").is_file() and (root / "head_ct").is_dir()


def load_headct(root: Path) -> DatasetIndex:
    folder = root / "head_ct"
    folder = single_child_with(folder, ("000.png",)) if not (folder / "000.png").exists() else folder
    with (root / "labels.csv").open(newline="") as f:
        rows = [{k.strip(): v.strip() for k, v in r.items()} for r in csv.DictReader(f)]
    test = []
    for r in rows:
        image = folder / f"{int(r['id']):03d}.png"
        if not image.is_file():
            raise DatasetError(f"{root / 'labels.csv'} lists id {r['id']} but {image} does not exist")
        anomalous = int(r["hemorrhage"])
        test.append(Sample(image, anomalous, "head_ct", defect="hemorrhage" if anomalous else "good"))
    return DatasetIndex("headct", root, test)


# -- yes/no folders: BrainMRI (brain_tumor_dataset/{no,yes}), Br35H ({no,yes}, a pred/ folder ignored) ----------------


def matches_yes_no(root: Path) -> bool:
    base = single_child_with(root, ("no", "yes"))
    return (base / "no").is_dir() and (base / "yes").is_dir()


def load_yes_no(root: Path) -> DatasetIndex:
    base = single_child_with(root, ("no", "yes"))
    cls = "br35h" if "br35" in str(root).lower() else "brain_mri"
    test = [Sample(p, 0, cls, defect="good") for p in images_in(base / "no")]
    test += [Sample(p, 1, cls, defect="tumor") for p in images_in(base / "yes")]
    return DatasetIndex("yes-no", root, test)


# -- ISIC 2016 part 1: an image folder and a *GroundTruth folder of *_Segmentation.png --------------------------------


def _isic_dirs(root: Path) -> tuple[Path, Path] | None:
    truth = [d for d in root.iterdir() if d.is_dir() and "groundtruth" in d.name.lower()]
    data = [d for d in root.iterdir() if d.is_dir() and d not in truth and images_in(d)]
    return (data[0], truth[0]) if len(truth) == 1 and len(data) == 1 else None


def matches_isic(root: Path) -> bool:
    return _isic_dirs(root) is not None


def load_isic(root: Path) -> DatasetIndex:
    found = _isic_dirs(root)
    assert found is not None
    images = images_in(found[0])
    masks = match_masks(images, found[1], "ISIC")
    return DatasetIndex("isic", root, [Sample(i, 1, "skin", m, "lesion") for i, m in zip(images, masks, strict=True)])


# -- BMAD: {train/good/img, test/{good,Ungood}/{img,anomaly_mask}} ----------------------------------------------------


def matches_bmad(root: Path) -> bool:
    return (root / "test" / "Ungood" / "img").is_dir() or (root / "valid" / "Ungood" / "img").is_dir()


def load_bmad(root: Path, split: str = "test") -> DatasetIndex:
    cls = root.name.lower()
    test = [Sample(p, 0, cls, defect="good") for p in images_in(root / split / "good" / "img")]
    bad = images_in(root / split / "Ungood" / "img")
    mask_dir = root / split / "Ungood" / "anomaly_mask"
    masks: list[Path | None] = (
        list(match_masks(bad, mask_dir, f"BMAD {split}")) if mask_dir.is_dir() else [None] * len(bad)
    )
    test += [Sample(p, 1, cls, m, "Ungood") for p, m in zip(bad, masks, strict=True)]
    train = [Sample(p, 0, cls, defect="good") for p in images_in(root / "train" / "good" / "img")]
    return DatasetIndex("bmad", root, test, train)


# -- image/mask folders ----------------------------------------------------------------------------------------------

IMAGE_MASK_PAIRS = (("images", "masks"), ("test-image", "test-mask"), ("Original", "Ground Truth"))


def _pair_dirs(root: Path) -> tuple[Path, Path] | None:
    for images, masks in IMAGE_MASK_PAIRS:
        base = single_child_with(root, (images, masks))
        if (base / images).is_dir() and (base / masks).is_dir():
            return base / images, base / masks
    return None


def matches_folder(root: Path) -> bool:
    return _pair_dirs(root) is not None


def load_folder(root: Path) -> DatasetIndex:
    """`images/` + `masks/` (or TN3K's and ClinicDB's names). Labels come from sub-folder names under images/
    (good/ok/normal = normal) where there are sub-folders, else from mask content (a non-empty mask = anomalous; an
    image without a mask = normal)."""
    found = _pair_dirs(root)
    assert found is not None
    image_dir, mask_dir = found
    masks = {mask_stem(m.stem): m for m in images_in(mask_dir, recursive=True)}
    cls = root.name.lower().replace("-", "_").replace(" ", "_")
    test = []
    for image in images_in(image_dir, recursive=True):
        mask = masks.get(image.stem)
        if image.parent != image_dir:
            anomalous = image.parent.name.lower() not in NORMAL_NAMES
        else:
            anomalous = mask is not None and bool(read_mask(mask).any())
        test.append(
            Sample(
                image,
                int(anomalous),
                cls,
                mask if anomalous else None,
                image.parent.name if image.parent != image_dir else ("defect" if anomalous else "good"),
            )
        )
    if not test:
        raise DatasetError(f"{image_dir}: no images")
    return DatasetIndex("folder", root, test)


def matches_endo(root: Path) -> bool:
    others = [d for d in root.iterdir() if d.is_dir() and d.name not in ("masks", "good") and images_in(d)]
    return (root / "masks").is_dir() and not (root / "images").is_dir() and bool(others)


def load_endo(root: Path) -> DatasetIndex:
    """EndoTect: every image folder but masks/ (and good/) is anomalous; masks share the image names."""
    test = [Sample(p, 0, "endoscopy", defect="good") for p in images_in(root / "good")]
    for d in sorted(root.iterdir()):
        if d.is_dir() and d.name not in ("masks", "good") and images_in(d):
            images = images_in(d)
            masks = match_masks(images, root / "masks", f"Endo {d.name}")
            test += [Sample(i, 1, "endoscopy", m, d.name) for i, m in zip(images, masks, strict=True)]
    return DatasetIndex("endo", root, test)
