"""Datasets on disk in their original layouts, found by looking at the folder (SPEC §5)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kanoclip.data.datasets import industrial, medical, meta
from kanoclip.data.datasets.base import DatasetIndex, Sample
from kanoclip.errors import DatasetError

# name -> (detector, loader). Order does not matter: detection must be unambiguous, or the user names the layout.
LAYOUTS: dict[str, tuple[Callable[[Path], bool], Callable[[Path], DatasetIndex]]] = {
    "meta": (meta.matches_meta, meta.load_meta),
    "mvtec": (industrial.matches_mvtec, industrial.load_mvtec),
    "visa": (industrial.matches_visa, industrial.load_visa),
    "kolektor": (industrial.matches_kolektor, industrial.load_kolektor),
    "kolektor-thirds": (lambda root: False, industrial.load_kolektor_thirds),  # chosen by name only
    "dagm": (industrial.matches_dagm, industrial.load_dagm),
    "headct": (medical.matches_headct, medical.load_headct),
    "yes-no": (medical.matches_yes_no, medical.load_yes_no),
    "isic": (medical.matches_isic, medical.load_isic),
    "bmad": (medical.matches_bmad, medical.load_bmad),
    "folder": (medical.matches_folder, medical.load_folder),
    "endo": (medical.matches_endo, medical.load_endo),
}

EXPECTED = """known layouts:
  mvtec      <root>/<class>/{train/good, test/<defect>, ground_truth/<defect>}  (MVTec AD, MPDD, BTAD, DTD-Synthetic,
             processed SDD and DAGM)
  visa       <root>/split_csv/1cls.csv and the class folders beside it
  kolektor   <root>/kosNN/PartK.jpg + PartK_label.bmp   (kolektor-thirds: AdaCLIP's thirds split, by name only)
  dagm       <root>/ClassN/{Train,Test}/NNNN.PNG + Label/NNNN_label.PNG
  headct     <root>/labels.csv + head_ct/NNN.png
  yes-no     <root>/{no,yes}/   (BrainMRI, Br35H)
  isic       <root>/<images>/ + <...GroundTruth>/*_Segmentation.png
  bmad       <root>/{train/good/img, test/{good,Ungood}/{img,anomaly_mask}}
  folder     <root>/images/ + masks/  (CVC-ColonDB, CVC-ClinicDB, Kvasir, TN3K, anyone's images)
  endo       <root>/<image folders>/ + masks/
  meta       <root>/meta.json (AnomalyCLIP)"""


def detect_layout(root: str | Path) -> str:
    """The one layout that fits `root`; none or several is an error that says what was expected."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"dataset folder {path} does not exist")
    found = [name for name, (matches, _) in LAYOUTS.items() if matches(path)]
    if "meta" in found:  # an explicit meta.json says how the author wants the folder read
        return "meta"
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(f"{path}: no known dataset layout found.\n{EXPECTED}")
    raise DatasetError(f"{path} fits several layouts {found}; choose one with --layout")


def load_dataset(root: str | Path, layout: str | None = None) -> DatasetIndex:
    """Index a dataset folder: detect its layout (or use `layout`) and list its samples."""
    path = Path(root).expanduser().resolve()
    name = layout or detect_layout(path)
    if name not in LAYOUTS:
        raise DatasetError(f"unknown layout {name!r}; known: {sorted(LAYOUTS)}")
    if not path.is_dir():
        raise DatasetError(f"dataset folder {path} does not exist")
    index = LAYOUTS[name][1](path)
    if not index.test:
        raise DatasetError(f"{path}: the {name} layout was recognised but holds no test images")
    return index


__all__ = ["LAYOUTS", "DatasetIndex", "Sample", "detect_layout", "load_dataset"]
