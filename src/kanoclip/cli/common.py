"""What several commands share: the model and run sections of their flags, and the one way a command builds its
detector from them."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from kanoclip.cli.flags import Parsed, Section
from kanoclip.errors import ConfigError
from kanoclip.inference.config import RunConfig
from kanoclip.model.config import KAnoCLIPConfig

EXIT_DISK_FULL = 3  # 1: some images unreadable, 2: a usage or input error

# The backbone flags; any other model field through --set. Model values are kept as changes (a partial section).
MODEL = Section("model", KAnoCLIPConfig, title="model", only=("backbone", "pretrained", "image_size"), partial=True)
MODEL_ONLY = ("model_file", "trust_torchscript")  # the run fields of commands that build a model but run no detector


# The defect-typing run fields (issue #34): only the commands that type (detect, watch, evaluate) show them.
DEFECT_TYPING = (
    "defect_typing",
    "defect_types",
    "defect_examples",
    "type_temperature",
    "type_example_weight",
    "type_min_p",
)


def run_section(skip: tuple[str, ...] = ("image_threshold", *DEFECT_TYPING), **kwargs: Any) -> Section:
    """The run options (RunConfig); only detect and watch take --threshold, and with evaluate the typing options."""
    return Section("run", RunConfig, title="run", skip=skip, **kwargs)


def run_config(parsed: Parsed) -> RunConfig:
    """The run options as a RunConfig: nothing decided here (RunConfig.validate refuses what cannot apply;
    Detector.from_config builds it)."""
    run = parsed.get(RunConfig)
    if run.trust_torchscript:
        from kanoclip.model.backbone import TRUST_TORCHSCRIPT

        os.environ[TRUST_TORCHSCRIPT] = "1"  # read where the file is loaded (Ray actors and DataLoaders inherit it)
    return run


def model_config(parsed: Parsed) -> KAnoCLIPConfig:
    """The model config the flags name: --model-config file, then the backbone flags, then --set."""
    return run_config(parsed).model_config()


def detector(parsed: Parsed, **changes: Any) -> Any:
    """The Detector a command runs, built by the one factory (`changes`: run fields the command fixes itself)."""
    from kanoclip.inference.detector import Detector

    det = Detector.from_config(run_config(parsed).replace(**changes))
    if det.references is not None:
        print(
            f"references: {det.references.images} good part(s), {det.references.describe()['patches_per_level']} "
            "patches per level"
        )
    return det


def report_unreadable(reasons: list[str]) -> int:
    """Exit status 1, with each file listed, when images could not be read; results are written all the same."""
    for reason in reasons:
        print(f"  unreadable: {reason}", file=sys.stderr)
    if reasons:
        print(f"kanoclip: {len(reasons)} image(s) could not be read (listed above)", file=sys.stderr)
    return 1 if reasons else 0


def read_key(key_file: str | None) -> str | None:
    """The API key: from the file named, else env KANOCLIP_API_KEY, else none."""
    if not key_file:
        return os.environ.get("KANOCLIP_API_KEY") or None
    try:
        return Path(key_file).expanduser().read_text().strip() or None
    except OSError as e:
        raise ConfigError(f"cannot read --api-key-file {key_file}: {e.strerror or e}") from e
