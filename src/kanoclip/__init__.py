"""kanoclip: zero-shot image anomaly detection with KAnoCLIP (Li et al., 2025) on a frozen CLIP.

The public names load lazily (PEP 562), so that `kanoclip --help` and `import kanoclip.cli` do not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from kanoclip._version import __version__ as __version__

_EXPORTS = {
    "Detector": "inference.detector",
    "Prediction": "inference.detector",
    "KAnoCLIP": "model.kanoclip",
    "Output": "model.kanoclip",
    "KAnoCLIPConfig": "model.config",
    "RunConfig": "inference.config",
    "TrainConfig": "model.config",
    "KanoclipError": "errors",
    "Thresholds": "inference.thresholds",
    "load": "model.checkpoint",
    "save": "model.checkpoint",
    "list_models": "model.presets",
    "create_model": "model.presets",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from kanoclip.errors import KanoclipError as KanoclipError
    from kanoclip.inference.config import RunConfig as RunConfig
    from kanoclip.inference.detector import Detector as Detector
    from kanoclip.inference.detector import Prediction as Prediction
    from kanoclip.inference.thresholds import Thresholds as Thresholds
    from kanoclip.model.checkpoint import load as load
    from kanoclip.model.checkpoint import save as save
    from kanoclip.model.config import KAnoCLIPConfig as KAnoCLIPConfig
    from kanoclip.model.config import TrainConfig as TrainConfig
    from kanoclip.model.kanoclip import KAnoCLIP as KAnoCLIP
    from kanoclip.model.kanoclip import Output as Output
    from kanoclip.model.presets import create_model as create_model
    from kanoclip.model.presets import list_models as list_models


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kanoclip' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
