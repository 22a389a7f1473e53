"""The station's content-addressed store: images, maps, overlays and banks as files named by their sha256, so equal
content is kept once and a row holds only hashes. Written before the row that names them is committed (a row never
points at a missing file); a file no row names any more is removed by retention.
"""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

from kanoclip._files import atomic_write_bytes
from kanoclip.errors import KanoclipError


class DiskFull(KanoclipError):
    """The store's disk is full (ENOSPC/EDQUOT): the request fails with 507, the server keeps serving."""


def sha256_of(data: bytes) -> str:
    """The name `data` has in the store (and in the rows that point at it)."""
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root / "blobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Store `data` (synced to disk) and return its sha256; content already stored is not written again."""
        sha256 = sha256_of(data)
        path = self.path(sha256)
        if path.exists():
            return sha256
        try:
            atomic_write_bytes(path, data)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(
                    f"the state folder's disk is full ({self.root}): free space or lower --max-store-gb"
                ) from e
            raise
        return sha256

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def size_bytes(self) -> int:
        """Every stored file's size: a walk of the store (retention keeps a running count in the database)."""
        return sum(entry.stat().st_size for entry in self.root.rglob("*") if entry.is_file())
