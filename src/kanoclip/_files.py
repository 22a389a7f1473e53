"""Crash-safe file writes shared by checkpoints, caches and reports."""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def sync_folder(folder: Path) -> None:
    """Make the names in `folder` durable: a file's own fsync does not persist its directory entry, so a power cut
    after a rename (or a create) can lose the name even though the bytes were synced. A filesystem that cannot sync
    a directory (EINVAL, ENOTSUP: some network and FUSE ones) is left as it is; Windows has no such call."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def make_folders(folder: Path, mode: int = 0o777) -> None:
    """`folder` and its missing parents, each created with `mode` (less the umask) and its name synced into its
    parent, so a synced file below never sits in a folder a crash forgets. One stat when it exists already."""
    if folder.is_dir():
        return
    if folder.parent != folder:
        make_folders(folder.parent, mode)
    try:
        folder.mkdir(mode=mode)
    except FileExistsError:  # another process or thread made it meanwhile: synced here too, not to wait on theirs
        if not folder.is_dir():
            raise
    sync_folder(folder.parent)


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write a file so that readers see the old content or the new one, never a torn one, and a crash keeps it once
    this returns: the bytes and then the folder's entry are synced (one folder sync per write). Its mode follows
    the umask as a plain open() would (mkstemp alone would make every output 0600), or is `mode` (a private one)."""
    make_folders(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


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


FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")  # OWASP's CSV-injection characters, and the escape itself


def spreadsheet_safe(cell: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (`=HYPERLINK(...)` as a file name), quoted with a
    leading apostrophe, as OWASP advises; numbers and other text pass unchanged. `from_spreadsheet` undoes it."""
    return "'" + cell if isinstance(cell, str) and cell.startswith(FORMULA_START) else cell


def from_spreadsheet(cell: str) -> str:
    """A cell as `spreadsheet_safe` wrote it, back to its text (kanoclip reads its own scores.csv to resume)."""
    return cell[1:] if cell.startswith("'") else cell
