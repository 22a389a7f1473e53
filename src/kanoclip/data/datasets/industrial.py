"""Industrial layouts: the MVTec family (MVTec AD, MPDD, BTAD, DTD-Synthetic, processed SDD and DAGM), VisA's split
file, raw KolektorSDD and raw DAGM (SPEC §5)."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image

from kanoclip.data.datasets.base import NORMAL_NAMES, DatasetIndex, Sample, images_in, match_masks
from kanoclip.data.images import read_mask
from kanoclip.errors import DatasetError

# -- MVTec family: <root>/<cls>/{train/good, test/<defect>, ground_truth/<defect>} -------------------------------------


def _has_test_images(cdir: Path) -> bool:
    test = cdir / "test"
    return test.is_dir() and any(d.is_dir() and images_in(d) for d in test.iterdir())


def _mvtec_class_dirs(root: Path) -> list[Path]:
    if _has_test_images(root):
        return [root]
    return [c for c in sorted(root.iterdir()) if c.is_dir() and _has_test_images(c)]


def matches_mvtec(root: Path) -> bool:
    return bool(_mvtec_class_dirs(root))


def load_mvtec(root: Path) -> DatasetIndex:
    test: list[Sample] = []
    train: list[Sample] = []
    for cdir in _mvtec_class_dirs(root):
        cls = cdir.name
        for good in NORMAL_NAMES:
            train += [Sample(p, 0, cls, defect="good") for p in images_in(cdir / "train" / good)]
        for defect_dir in sorted(d for d in (cdir / "test").iterdir() if d.is_dir()):
            images = images_in(defect_dir)
            if defect_dir.name.lower() in NORMAL_NAMES:
                test += [Sample(p, 0, cls, defect="good") for p in images]
                continue
            gt = cdir / "ground_truth" / defect_dir.name
            masks: list[Path | None] = (
                list(match_masks(images, gt, f"{cls}/{defect_dir.name}")) if gt.is_dir() else [None] * len(images)
            )
            test += [Sample(p, 1, cls, m, defect_dir.name) for p, m in zip(images, masks, strict=True)]
    if not test:
        raise DatasetError(f"{root}: MVTec-like layout without test images (expected <class>/test/<defect>/*.png)")
    return DatasetIndex("mvtec", root, test, train)


# -- VisA: split_csv/1cls.csv with paths relative to the root ----------------------------------------------------------


def matches_visa(root: Path) -> bool:
    return (root / "split_csv" / "1cls.csv").is_file()


def load_visa(root: Path) -> DatasetIndex:
    split_file = root / "split_csv" / "1cls.csv"
    with split_file.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"object", "split", "label", "image", "mask"} <= set(rows[0]):
        raise DatasetError(f"{split_file}: expected the columns object,split,label,image,mask of VisA's 1cls.csv")
    missing = [r["image"] for r in rows if not (root / r["image"]).is_file()]
    if missing:
        raise DatasetError(
            f"{split_file} lists {len(rows)} images but {len(missing)} are missing under {root} (first: {missing[0]}). "
            "Put the VisA class folders (candle/, capsules/, ...) beside split_csv/, as in the official release"
        )
    test: list[Sample] = []
    train: list[Sample] = []
    for r in rows:
        anomalous = r["label"].strip().lower() == "anomaly"
        sample = Sample(
            root / r["image"],
            int(anomalous),
            r["object"],
            root / r["mask"] if r["mask"] else None,
            "anomaly" if anomalous else "good",
        )
        (test if r["split"] == "test" else train).append(sample)
    return DatasetIndex("visa", root, test, train)


# -- KolektorSDD raw: kosNN/PartK.jpg + PartK_label.bmp ---------------------------------------------------------------

_KOS = re.compile(r"kos\d+$")


def _kos_dirs(root: Path) -> list[Path]:
    return [d for d in sorted(root.iterdir()) if d.is_dir() and _KOS.match(d.name)]


def matches_kolektor(root: Path) -> bool:
    return any(any(d.glob("Part*_label.bmp")) for d in _kos_dirs(root))


def _kolektor_parts(root: Path) -> list[tuple[Path, Path]]:
    parts = []
    for d in _kos_dirs(root):
        for image in sorted(d.glob("Part*.jpg")):
            label = image.with_name(f"{image.stem}_label.bmp")
            if not label.is_file():
                raise DatasetError(f"{image}: KolektorSDD image without its {label.name}")
            parts.append((image, label))
    return parts


def load_kolektor(root: Path) -> DatasetIndex:
    """Whole images; an image is defective when its label has any non-zero pixel."""
    test = [
        Sample(
            image,
            int(read_mask(label).any()),
            "electrical_commutators",
            label,
            "defect" if read_mask(label).any() else "good",
        )
        for image, label in _kolektor_parts(root)
    ]
    return DatasetIndex("kolektor", root, test)


def load_kolektor_thirds(root: Path, seed: int = 42) -> DatasetIndex:
    """AdaCLIP's conversion (I19): each image cut into three thirds of its height; a third is defective if its label
    crop is non-zero; normal thirds split 75/25 train/test by a seeded permutation (sklearn's ShuffleSplit rule)."""
    defective: list[Sample] = []
    normal: list[Sample] = []
    for image, label in _kolektor_parts(root):
        mask = read_mask(label)
        with Image.open(image) as opened:  # the header only; closed at once (one file per image otherwise)
            w, h = opened.size
        for i in range(3):
            crop = (0, i * h // 3, w, (i + 1) * h // 3)
            anomalous = bool(mask[crop[1] : crop[3]].any())
            sample = Sample(
                image, int(anomalous), "electrical_commutators", label, "defect" if anomalous else "good", crop
            )
            (defective if anomalous else normal).append(sample)
    order = np.random.RandomState(seed).permutation(len(normal))
    n_test = math.ceil(0.25 * len(normal))
    test = [normal[i] for i in sorted(order[:n_test])] + defective
    train = [normal[i] for i in sorted(order[n_test:])]
    return DatasetIndex("kolektor-thirds", root, test, train)


# -- DAGM raw: ClassN/{Train,Test}/NNNN.PNG + Label/NNNN_label.PNG ----------------------------------------------------


def _dagm_classes(root: Path) -> list[Path]:
    return [
        d
        for d in sorted(root.iterdir())
        if d.is_dir() and re.match(r"Class\d+(_def)?$", d.name) and (d / "Test").is_dir()
    ]


def matches_dagm(root: Path) -> bool:
    return bool(_dagm_classes(root))


def load_dagm(root: Path) -> DatasetIndex:
    """The Test split of every class; an image is defective when Label/ holds its `_label` file."""
    test: list[Sample] = []
    train: list[Sample] = []
    for cdir in _dagm_classes(root):
        for split, out in (("Test", test), ("Train", train)):
            for image in images_in(cdir / split):
                label = cdir / split / "Label" / f"{image.stem}_label{image.suffix}"
                if split == "Test":
                    out.append(
                        Sample(
                            image,
                            int(label.is_file()),
                            cdir.name,
                            label if label.is_file() else None,
                            "defect" if label.is_file() else "good",
                        )
                    )
                elif not label.is_file():
                    out.append(Sample(image, 0, cdir.name, defect="good"))
    return DatasetIndex("dagm", root, test, train)
