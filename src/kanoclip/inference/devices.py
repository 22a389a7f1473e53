"""Where and in what precision a model runs: device names, autocast dtypes, and DataLoader workers that die with
their parent (a killed run must not leave gigabyte-sized orphans behind)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

import torch

from kanoclip.errors import ConfigError
from kanoclip.model.config import PRECISIONS


def resolve_device(device: str) -> torch.device:
    """auto: the first CUDA GPU when torch sees one (under torchrun, this process's GPU: LOCAL_RANK), else the CPU;
    anything else must exist here."""
    if device in ("auto", "cuda") and torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use --device cpu")
    return resolved


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """None means fp32. auto: bf16 on a GPU that has it, fp16 on older GPUs, fp32 on CPU."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def die_with_parent(worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn`: ask Linux to SIGKILL this worker when its parent dies (even by SIGKILL, which
    runs no clean-up in the parent). Elsewhere a no-op: other systems have no such request."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
