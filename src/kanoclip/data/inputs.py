"""What the user points a command at: files, folders and globs turned into image files, and the output names
that stay unique for every input (SPEC-free: this is the tool's own contract with its users)."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from kanoclip.data.images import IMAGE_SUFFIXES, is_image_file
from kanoclip.errors import ImageReadError

MASK_FOLDERS = ("ground_truth", "masks", "mask", "anomaly_mask", "label", "labels")
MASK_SUFFIXES = ("_mask", "_label", "_gt", "_segmentation")  # compared in lower case


def mask_stem(stem: str) -> str:
    """An image's stem from its mask's stem (`000_mask` -> `000`, `Part3_label` -> `Part3`)."""
    for suffix in MASK_SUFFIXES:
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def looks_like_mask(path: Path) -> bool:
    """Ground-truth files inside dataset folders (MVTec `ground_truth/`, KolektorSDD `PartK_label.bmp`)."""
    lowered = [part.lower() for part in path.parts[:-1]]
    return any(f in lowered for f in MASK_FOLDERS) or mask_stem(path.stem) != path.stem


MAX_INPUTS = 5_000_000  # paths one command may gather; past it, a clear error rather than a run that never starts


def _glob(pattern: str) -> list[Path]:
    """A glob pattern through pathlib, whose `**` does not follow symbolic links: a link loop cannot make it endless."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = Path(*parts[:first]) if first else Path(".")
    return list(root.glob(str(Path(*parts[first:]))))


def expand_inputs(inputs: Sequence[str | Path], exclude: str | Path | None = None) -> tuple[list[Path], int]:
    """Files, folders (searched recursively) and glob patterns -> image files in a stable order, and the number of
    ground-truth masks skipped inside folders. A path that matches nothing is an error that names it. Files are
    de-duplicated by real path; anything below `exclude` (a run's output folder inside its inputs) is left out."""
    found: dict[Path, Path] = {}  # resolved -> as the user named it: a file reached twice is scored once
    skipped = 0
    excluded = Path(exclude).expanduser().resolve() if exclude is not None else None

    def wanted(p: Path) -> bool:
        return excluded is None or not p.resolve().is_relative_to(excluded)

    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir() or (not path.exists() and glob.has_magic(str(raw))):
            files: list[Path] = []
            for p in path.rglob("*") if path.is_dir() else _glob(str(path)):
                if len(files) >= MAX_INPUTS:
                    raise ImageReadError(f"{raw}: more than {MAX_INPUTS:,} files; split the inputs into several runs")
                if is_image_file(p) and wanted(p):
                    files.append(p)
            files.sort()
            images = [p for p in files if not looks_like_mask(p)]
            skipped += len(files) - len(images)
            if not images:
                raise ImageReadError(f"{raw}: no image files found ({', '.join(IMAGE_SUFFIXES)})")
            found.update((p.resolve(), p) for p in images if p.resolve() not in found)
        elif path.exists():
            found.setdefault(path.resolve(), path)  # an explicit file is always tried; a bad one fails by itself
        else:
            raise ImageReadError(f"{raw}: no such file or folder")
    return list(found.values()), skipped


def output_names(paths: Sequence[Path]) -> list[str]:
    """One output name per input, unique by construction: the file's path below the inputs' common folder, with its
    suffix kept (`x.jpg` and `x.png` differ) and its folders kept as folders (`a/y.png` and `a__y.png` differ)."""
    resolved = [p.resolve() for p in paths]
    if not resolved:
        return []
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    return [p.relative_to(root).as_posix() for p in resolved]
