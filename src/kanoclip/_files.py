"""Crash-safe file writes shared by checkpoints, caches and reports."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def npy_bytes(array: np.ndarray) -> bytes:
    """An array in NumPy's .npy format, for writing through `atomic_write_bytes`."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def atomic_write_json(path: Path, document: Any, indent: int = 1) -> None:
    """A JSON document written through `atomic_write_bytes`, with a final newline."""
    atomic_write_bytes(path, (json.dumps(document, indent=indent) + "\n").encode())
