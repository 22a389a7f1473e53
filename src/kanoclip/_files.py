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


def read_json_object(path: Path, error: type[Exception], missing: str, damaged: str) -> dict[str, Any]:
    """A JSON object kanoclip wrote, or `error`: "<path> is missing: <missing>" or "<path> is not a valid JSON object
    (...); <damaged>"."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise error(f"{path} is missing: {missing}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path} is not a valid JSON object ({e}); {damaged}") from e
    if not isinstance(document, dict):
        raise error(f"{path} is not a valid JSON object (it holds a {type(document).__name__}); {damaged}")
    return document
