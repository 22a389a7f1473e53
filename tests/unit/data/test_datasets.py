"""Every layout loader on a miniature of its layout written here, and the real folders of ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kanoclip.data.datasets import detect_layout, load_dataset
from kanoclip.data.datasets.meta import write_meta
from kanoclip.data.datasets.synthetic import generate
from kanoclip.errors import DatasetError


def img(path: Path, value: int = 128, size: tuple[int, int] = (16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def mask(path: Path, on: bool = True, size: tuple[int, int] = (16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size[1], size[0]), np.uint8)
    if on:
        a[2:5, 3:7] = 255
    Image.fromarray(a).save(path)
    return path


def counts(root: Path, layout: str | None = None) -> tuple[str, int, int, int, int]:
    index = load_dataset(root, layout)
    labels = [s.label for s in index.test]
    return index.name, labels.count(0), labels.count(1), sum(s.mask is not None for s in index.test), len(index.train)


def test_mvtec_family_including_btad_ok_ko_and_masks_without_suffix(tmp_path: Path) -> None:
    for i in range(3):
        img(tmp_path / "mvtec/bottle/train/good" / f"{i:03d}.png")
    img(tmp_path / "mvtec/bottle/test/good/000.png")
    for i in range(2):
        img(tmp_path / "mvtec/bottle/test/broken" / f"{i:03d}.png")
        mask(tmp_path / "mvtec/bottle/ground_truth/broken" / f"{i:03d}_mask.png")
    img(tmp_path / "btad/01/test/ok/0000.bmp")
    img(tmp_path / "btad/01/test/ko/0001.bmp")
    mask(tmp_path / "btad/01/ground_truth/ko/0001.png")
    img(tmp_path / "btad/01/train/ok/0002.bmp")
    assert counts(tmp_path / "mvtec") == ("mvtec", 1, 2, 2, 3)
    assert counts(tmp_path / "btad") == ("mvtec", 1, 1, 1, 1)
    index = load_dataset(tmp_path / "mvtec")
    assert [s.mask.name for s in index.test if s.mask] == ["000_mask.png", "001_mask.png"]


def test_visa_split_file(tmp_path: Path) -> None:
    rows = ["object,split,label,image,mask"]
    for i, (split, label) in enumerate([("train", "normal"), ("test", "normal"), ("test", "anomaly")]):
        sub = "Anomaly" if label == "anomaly" else "Normal"
        img(tmp_path / f"candle/Data/Images/{sub}/{i:04d}.JPG")
        m = f"candle/Data/Masks/Anomaly/{i:03d}.png" if label == "anomaly" else ""
        if m:
            mask(tmp_path / m)
        rows.append(f"candle,{split},{label},candle/Data/Images/{sub}/{i:04d}.JPG,{m}")
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    assert counts(tmp_path) == ("visa", 1, 1, 1, 1)


def test_kolektor_raw_and_thirds(tmp_path: Path) -> None:
    for part, on in ((0, False), (1, True)):
        img(tmp_path / f"kos01/Part{part}.jpg", size=(10, 30))
        m = np.zeros((30, 10), np.uint8)
        if on:
            m[12:14, 2:4] = 1  # palette-style 0/1 labels, as in the real set
        Image.fromarray(m).save(tmp_path / f"kos01/Part{part}_label.bmp")
    assert counts(tmp_path) == ("kolektor", 1, 1, 2, 0)
    _, normal, anomalous, _, train = counts(tmp_path, "kolektor-thirds")
    assert (anomalous, normal + train) == (1, 5)  # the defect lies in the middle third only


def test_dagm_raw(tmp_path: Path) -> None:
    img(tmp_path / "Class1/Test/0001.PNG")
    img(tmp_path / "Class1/Test/0002.PNG")
    mask(tmp_path / "Class1/Test/Label/0002_label.PNG")
    img(tmp_path / "Class1/Train/0003.PNG")
    assert counts(tmp_path) == ("dagm", 1, 1, 1, 1)


def test_headct_raw(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n100,0\n")
    img(tmp_path / "head_ct/head_ct/000.png")
    img(tmp_path / "head_ct/head_ct/100.png")
    assert counts(tmp_path) == ("headct", 1, 1, 0, 0)


def test_yes_no_folders_ignore_extra_folders(tmp_path: Path) -> None:
    img(tmp_path / "br35/no/n1.jpg")
    img(tmp_path / "br35/yes/y1.jpg")
    img(tmp_path / "br35/yes/y2.jpg")
    assert counts(tmp_path / "br35") == ("yes-no", 1, 2, 0, 0)


def test_isic(tmp_path: Path) -> None:
    img(tmp_path / "ISBI2016_ISIC_Part1_Test_Data/ISIC_01.jpg")
    mask(tmp_path / "ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_01_Segmentation.png")
    assert counts(tmp_path) == ("isic", 0, 1, 1, 0)


def test_bmad(tmp_path: Path) -> None:
    img(tmp_path / "Liver/train/good/img/a.png")
    img(tmp_path / "Liver/test/good/img/b.png")
    img(tmp_path / "Liver/test/Ungood/img/c.png")
    mask(tmp_path / "Liver/test/Ungood/anomaly_mask/c.png")
    assert counts(tmp_path / "Liver") == ("bmad", 1, 1, 1, 1)


@pytest.mark.parametrize(
    "images,masks", [("images", "masks"), ("test-image", "test-mask"), ("Original", "Ground Truth")]
)
def test_image_mask_folders_label_from_mask_content(tmp_path: Path, images: str, masks: str) -> None:
    img(tmp_path / images / "a.png")
    mask(tmp_path / masks / "a.png")
    img(tmp_path / images / "b.png")
    mask(tmp_path / masks / "b.png", on=False)  # an empty mask: a normal image
    img(tmp_path / images / "c.png")  # no mask at all: normal
    assert counts(tmp_path) == ("folder", 2, 1, 1, 0)


def test_generic_folder_labels_from_folder_names(tmp_path: Path) -> None:
    img(tmp_path / "images/good/a.png")
    img(tmp_path / "images/dent/b.png")
    mask(tmp_path / "masks/b_mask.png")
    (tmp_path / "masks").mkdir(exist_ok=True)
    assert counts(tmp_path) == ("folder", 1, 1, 1, 0)


def test_endo(tmp_path: Path) -> None:
    img(tmp_path / "polyps/p1.jpg")
    img(tmp_path / "ulcers/u1.jpg")
    mask(tmp_path / "masks/p1.png")
    mask(tmp_path / "masks/u1.png")
    assert counts(tmp_path) == ("endo", 0, 2, 2, 0)


def test_meta_json_written_and_read_back(tmp_path: Path) -> None:
    generate(tmp_path / "synth", size=32, train=2, good=2, per_defect=1)
    original = load_dataset(tmp_path / "synth")
    write_meta(original)
    assert detect_layout(tmp_path / "synth") == "meta"
    again = load_dataset(tmp_path / "synth")
    assert [(s.image, s.label, s.mask, s.cls) for s in again.test] == [
        (s.image, s.label, s.mask, s.cls) for s in original.test
    ]
    assert json.loads((tmp_path / "synth/meta.json").read_text())["test"]["disc"][0]["img_path"].startswith("disc/")


def test_meta_json_with_dagm_capitalised_keys_says_what_to_rename(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text(json.dumps({"Train": {}, "Test": {}}))
    with pytest.raises(DatasetError, match="rename it to 'test'"):
        load_dataset(tmp_path)


def test_synthetic_generator_writes_exact_masks(tmp_path: Path) -> None:
    generate(tmp_path, size=64, train=1, good=1, per_defect=2, seed=3)
    index = load_dataset(tmp_path)
    assert counts(tmp_path) == ("mvtec", 2, 8, 8, 2)
    for s in index.test:
        if s.mask:
            m = np.asarray(Image.open(s.mask)) > 0
            assert 0 < m.sum() < m.size
    generate(tmp_path / "again", size=64, train=1, good=1, per_defect=2, seed=3)
    assert (tmp_path / "disc/test/stain/001.png").read_bytes() == (
        tmp_path / "again/disc/test/stain/001.png"
    ).read_bytes()


def test_unknown_and_ambiguous_layouts_are_clear_errors(tmp_path: Path) -> None:
    img(tmp_path / "random/x.png")
    with pytest.raises(DatasetError, match="known layouts"):
        load_dataset(tmp_path / "random")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    img(tmp_path / "both/no/a.png")
    img(tmp_path / "both/yes/b.png")
    img(tmp_path / "both/images/c.png")
    mask(tmp_path / "both/masks/c.png")
    with pytest.raises(DatasetError, match="several layouts"):
        load_dataset(tmp_path / "both")
    img(tmp_path / "nomask/bottle/test/broken/000.png")
    img(tmp_path / "nomask/bottle/test/broken/001.png")
    mask(tmp_path / "nomask/bottle/ground_truth/broken/000_mask.png")
    with pytest.raises(DatasetError, match=r"no mask for 001\.png"):
        load_dataset(tmp_path / "nomask")


def test_shared_mvtec_kolektor_kvasir_and_medical_counts(shared_data: Path) -> None:
    assert counts(shared_data / "MVTec_AD") == ("mvtec", 5, 15, 0, 10)
    assert counts(shared_data / "MVTec_derived_hazelnut_toy") == ("mvtec", 6, 17, 17, 28)
    assert counts(shared_data / "KolektorSDD") == ("kolektor", 112, 35, 147, 0)
    assert counts(shared_data / "Kvasir-SEG") == ("folder", 0, 5, 5, 0)
    assert counts(shared_data / "BrainMRI") == ("yes-no", 98, 155, 0, 0)
    assert counts(shared_data / "HeadCT") == ("headct", 25, 25, 0, 0)


def test_shared_visa_split_without_images_says_what_is_missing(shared_data: Path) -> None:
    with pytest.raises(DatasetError, match="10821 images but 10821 are missing"):
        load_dataset(shared_data / "VisA")
