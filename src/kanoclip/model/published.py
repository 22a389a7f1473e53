"""Published prompts by name: `--checkpoint anomalyclip:trained-on-visa` (issue #33).

AnomalyCLIP keeps two trained prompt learners in its GitHub repository, both for the frozen OpenAI CLIP
ViT-L/14@336px: one trained on VisA (its MVTec AD results) and one trained on MVTec AD (every other dataset). The
first use of a name fetches the file at a pinned commit into the cache (`$KANOCLIP_CACHE`, default
`~/.cache/kanoclip`), checks its sha256, converts it once (`anomalyclip.convert`) and keeps the converted checkpoint;
later uses read the cache and touch no network. `$KANOCLIP_ANOMALYCLIP_URL` points at a mirror of the repository.

This module imports no torch until a name is resolved, so listing the names stays fast.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kanoclip._files import atomic_write_bytes
from kanoclip.errors import CheckpointError

PREFIX = "anomalyclip:"
REPOSITORY = "zqhang/AnomalyCLIP"
# The commit other projects pin for these files (the sha256s below are theirs too); files at a commit never change.
COMMIT = "3911738c0867544f545a076ad78f3f11d9ecbfdf"
BASE_URL = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/"
BASE_URL_ENV = "KANOCLIP_ANOMALYCLIP_URL"  # a mirror holding the same paths (tests: a local server)
MAX_BYTES = 100 * 1024**2  # the real files are ~23 MB: a server sending more is not serving them
BACKBONE_FIELDS = ("backbone", "pretrained", "quick_gelu", "random_seed")  # what the conversion is keyed by
CONFIG = "config.json"  # written last by `checkpoint.save`: its presence means the conversion finished


@dataclass(frozen=True)
class Published:
    """One published prompt learner: where it lies in the repository and what it was trained on."""

    path: str
    sha256: str
    trained_on: str
    description: str


PUBLISHED: dict[str, Published] = {
    "trained-on-visa": Published(
        "checkpoints/9_12_4_multiscale/epoch_15.pth",
        "94ce202da3e6486a864b904fdfed5057de75846c5834e446fd1d2fe7f97acb44",
        "VisA",
        "AnomalyCLIP's prompts trained on VisA's test split; its published MVTec AD numbers",
    ),
    "trained-on-mvtec": Published(
        "checkpoints/9_12_4_multiscale_visa/epoch_15.pth",
        "415c5dcb52668b8c33fb9c1a351c686d632b919df5b384d63fa9ce7a2338ced4",
        "MVTec AD",
        "AnomalyCLIP's prompts trained on MVTec AD's test split; its published numbers on every other dataset",
    ),
}


def names() -> list[str]:
    """Every published name, as `--checkpoint` takes it."""
    return [PREFIX + name for name in PUBLISHED]


def is_published(value: str) -> bool:
    return value.startswith(PREFIX)


def cache_folder() -> Path:
    root = Path(os.environ.get("KANOCLIP_CACHE", Path.home() / ".cache" / "kanoclip")).expanduser()
    return root / "anomalyclip" / COMMIT[:12]


def resolve_checkpoint(value: str, changes: Mapping[str, Any] | None = None) -> str:
    """`value` itself, unless it names published prompts: then their converted checkpoint folder, fetched and
    converted on first use. `changes`: the run's model changes; its backbone fields (--backbone, --pretrained) choose
    the CLIP the prompts are converted for, and each choice is converted once."""
    if not is_published(value):
        return value
    name = value[len(PREFIX) :]
    if name not in PUBLISHED:
        raise CheckpointError(f"unknown published checkpoint {value!r}; known: {', '.join(names())}")
    entry = PUBLISHED[name]
    backbone = {k: v for k, v in (changes or {}).items() if k in BACKBONE_FIELDS}
    if isinstance(backbone.get("pretrained"), str) and Path(backbone["pretrained"]).expanduser().is_file():
        backbone["pretrained"] = str(Path(backbone["pretrained"]).expanduser().resolve())
    folder = cache_folder() / name
    out = folder / ("converted-" + hashlib.sha256(repr(sorted(backbone.items())).encode()).hexdigest()[:12])
    if (out / CONFIG).is_file():
        return str(out)
    url = os.environ.get(BASE_URL_ENV, BASE_URL).rstrip("/") + "/" + entry.path
    weights = folder / Path(entry.path).name
    if not weights.is_file():
        _fetch(url, weights, entry.sha256)
    from kanoclip.model.anomalyclip import BACKBONE, convert
    from kanoclip.model.config import KAnoCLIPConfig

    print(
        f"kanoclip: converting {value} once into {out}. Its prompts run on {BACKBONE}; open_clip downloads those "
        "weights once (about 1.7 GB) unless --pretrained names a local copy",
        file=sys.stderr,
    )
    convert(weights, out, KAnoCLIPConfig().replace(**backbone), trained_on=entry.trained_on, source=url)
    return str(out)


def _fetch(url: str, dest: Path, sha256: str) -> None:
    """The file at `url` into `dest`, whole or not at all, if its sha256 is the published one."""
    print(f"kanoclip: fetching {url} (once) into {dest.parent}", file=sys.stderr)
    hint = (
        "download it on a machine with a network, then convert it here with `kanoclip convert anomalyclip FILE "
        "--out DIR` and use --checkpoint DIR"
    )
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read(MAX_BYTES + 1)
    except (urllib.error.URLError, OSError) as e:
        raise CheckpointError(f"cannot fetch {url} ({getattr(e, 'reason', e)}); {hint}") from e
    if len(data) > MAX_BYTES:
        raise CheckpointError(f"{url} sent over {MAX_BYTES // 1024**2} MB: that is not AnomalyCLIP's prompt file")
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise CheckpointError(
            f"{url} has sha256 {digest}, not the published {sha256}: refused (a changed or damaged file); {hint}"
        )
    atomic_write_bytes(dest, data)
