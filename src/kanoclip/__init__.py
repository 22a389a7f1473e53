"""kanoclip: zero-shot image anomaly detection with KAnoCLIP (Li et al., 2025) on a frozen CLIP.

The public names load lazily (PEP 562), so that `kanoclip --help` and `import kanoclip.cli` do not import torch.
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("kanoclip")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS = {
    "Detector": "detection",
    "Prediction": "detection",
    "KAnoCLIP": "model",
    "Output": "model",
    "KAnoCLIPConfig": "config",
    "RunConfig": "config",
    "TrainConfig": "config",
    "KanoclipError": "errors",
    "Thresholds": "thresholds",
    "load": "checkpoint",
    "save": "checkpoint",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .checkpoint import load as load
    from .checkpoint import save as save
    from .config import KAnoCLIPConfig as KAnoCLIPConfig
    from .config import RunConfig as RunConfig
    from .config import TrainConfig as TrainConfig
    from .detection import Detector as Detector
    from .detection import Prediction as Prediction
    from .errors import KanoclipError as KanoclipError
    from .model import KAnoCLIP as KAnoCLIP
    from .model import Output as Output
    from .thresholds import Thresholds as Thresholds


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kanoclip' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
