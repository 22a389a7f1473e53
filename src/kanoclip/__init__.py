"""kanoclip: zero-shot image anomaly detection with KAnoCLIP (Li et al., 2025) on a frozen CLIP."""

from .checkpoint import load, save
from .config import KAnoCLIPConfig, TrainConfig
from .detection import Detector, Prediction
from .errors import KanoclipError
from .model import KAnoCLIP, Output

__all__ = [
    "Detector",
    "KAnoCLIP",
    "KAnoCLIPConfig",
    "KanoclipError",
    "Output",
    "Prediction",
    "TrainConfig",
    "load",
    "save",
]
__version__ = "0.1.0"
