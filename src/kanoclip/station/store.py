"""The station's content-addressed store: images, maps, overlays and banks as files named by their sha256, so equal
content is kept once and a row holds only hashes. Written before the row that names them is committed (a row never
points at a missing file); a file no row names any more is removed by retention.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from kanoclip._files import atomic_write_bytes, make_folders
from kanoclip.errors import ConfigError, KanoclipError


class DiskFull(KanoclipError):
    """The store's disk is full (ENOSPC/EDQUOT): the request fails with 507, the server keeps serving."""


def sha256_of(data: bytes) -> str:
    """The name `data` has in the store (and in the rows that point at it)."""
    return hashlib.sha256(data).hexdigest()


FOLDER_MODE = 0o700  # the store holds every image inspected: readable by the station's user only
FILE_MODE = 0o600  # and each of its files, wherever one is copied
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def private_folder(folder: Path) -> None:
    """`folder` created 0700 (its missing parents too, each synced into its parent), and written to once: a
    read-only one is one line naming it, not a failure at the first result (or a blamed network)."""
    try:
        make_folders(folder, FOLDER_MODE)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        if e.errno in READ_ONLY:
            raise ConfigError(
                f"the state folder {folder} is read-only ({e.strerror}): the station writes its database and images "
                "there; give a writable --state or fix its permissions"
            ) from e
        raise


SHA256 = re.compile(r"[0-9a-f]{64}")  # a stored file's name
PUT_GRACE_S = 60.0  # far longer than a put takes to reach its row's commit
RETIRED_GRACE_S = 5.0  # far longer than a reader takes from a profile's row to its bank file
UNFINISHED = re.compile(r"\.[0-9a-f]{64}\.[A-Za-z0-9_]+")  # `atomic_write_bytes`' temporary name for a blob


class BlobStore:
    def __init__(self, root: Path, grace_s: float = PUT_GRACE_S) -> None:
        self.root, self.grace_s = root / "blobs", grace_s
        private_folder(self.root)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Store `data` (synced to disk) and return its sha256; content already stored is not written again."""
        sha256 = sha256_of(data)
        path = self.path(sha256)
        try:
            os.utime(path)  # needed again: retention sees it fresh and leaves it to the row about to name it
            return sha256
        except FileNotFoundError:
            pass
        try:
            make_folders(path.parent, FOLDER_MODE)  # blobs/xx, 0700, its name synced into blobs/
            atomic_write_bytes(path, data, FILE_MODE)  # the bytes, then its name in blobs/xx, synced
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

    def retire(self, sha256: str) -> None:
        """A file no longer named by the row that named it (a replaced bank): it may go `RETIRED_GRACE_S` from now
        (a reader of the old row a moment ago still finds it), unless it is put again meanwhile (a full grace)."""
        expires = time.time() - self.grace_s + min(RETIRED_GRACE_S, self.grace_s)
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(sha256), (expires, expires))

    def delete_unneeded(self, sha256: str) -> bool:
        """Delete a blob that no row names, unless it was put (or put again, or retired) within `grace_s`: a request
        in flight writes its files before its row commits, and must not find them gone. Returns whether it went."""
        return self._delete_past_grace(self.path(sha256))

    def names(self) -> Iterator[str]:
        """The sha256 of every stored file, as a walk of the store finds them."""
        return (p.name for p in self.root.glob("??/*") if SHA256.fullmatch(p.name) and p.is_file())

    def unfinished(self) -> list[Path]:
        """The temporary files of puts that a crash stopped before their rename (`atomic_write_bytes`): no row can
        name them, and no put comes back for them."""
        return sorted(p for p in self.root.glob("??/.*") if UNFINISHED.fullmatch(p.name) and p.is_file())

    def delete_unfinished(self, path: Path) -> bool:
        """Delete one of `unfinished`, unless it was written within `grace_s` (a put still writing it)."""
        if path.parent.parent != self.root or not UNFINISHED.fullmatch(path.name):
            raise ValueError(f"{path} is not a put's temporary file in {self.root}")
        return self._delete_past_grace(path)

    def _delete_past_grace(self, path: Path) -> bool:
        try:
            if time.time() - path.stat().st_mtime < self.grace_s:
                return False
        except FileNotFoundError:
            return False
        path.unlink(missing_ok=True)
        return True

    def size_bytes(self) -> int:
        """Every stored file's size: a walk of the store (retention keeps a running count in the database)."""
        return sum(entry.stat().st_size for entry in self.root.rglob("*") if entry.is_file())
