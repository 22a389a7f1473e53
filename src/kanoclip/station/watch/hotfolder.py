"""A hot folder: image files that arrive in a folder, handed on once complete.

The `watchdog` library reports changes (inotify on Linux; its polling observer on network filesystems, where no
events arrive). A file counts as complete when its writer closes it (inotify's IN_CLOSE_WRITE) or it is renamed into
the folder, or else when its size and modification time have held for `settle_s`; a file read too early (a writer
that closes between chunks, or pauses longer than the settle) fails to decode and is tried again by the watcher. One
still changing after `max_wait_s` is reported as never completed. Hidden files and names of partial uploads (`.part`,
`.tmp`, `.crdownload`) are ignored until renamed, and so is everything under the folders the watcher sorts into
(`exclude`). A symbolic link is followed only to a file inside the folder.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kanoclip.data.images import is_image_file
from kanoclip.errors import ConfigError, KanoclipError

WRITES = ("created", "modified", "moved", "closed")  # watchdog's event types that change a file
COMPLETES = ("closed", "moved")  # of those, the ones that say its writer is done: closed after writing, renamed in
PARTIAL_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".filepart")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


class OutsideFolder(KanoclipError):
    """A path in the folder whose file lies elsewhere (a symbolic link out of it) or is not a regular file."""


@dataclass
class _Pending:
    first_seen: float
    size: int = -1
    mtime_ns: int = -1
    stable_since: float = 0.0
    closed: bool = False  # closed after writing, or renamed in: complete without settling


class HotFolder:
    def __init__(
        self,
        folder: Path,
        settle_s: float,
        max_wait_s: float,
        poll: bool,
        existing: str,
        exclude: tuple[Path, ...] = (),
    ) -> None:
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a folder to watch (missing, or a file): create it or check the path")
        if existing not in ("score", "skip"):
            raise ConfigError(f"--existing is score or skip, got {existing!r}")
        self.folder, self.settle_s, self.max_wait_s = folder.resolve(), settle_s, max_wait_s
        # --ok-dir/--ng-dir inside the folder: what is sorted there is never taken in again
        self.exclude = tuple(d.resolve() for d in exclude)
        self.pending: dict[Path, _Pending] = {}
        self.lock = threading.Lock()
        self.poll = poll
        self.observer: object | None = None
        # With `skip`, what is here now is left alone; the folder is scanned again once the observer runs, so a file
        # that arrives between now and then is neither skipped nor missed.
        self.skipped = {path: _identity(path) for path in self._files()} if existing == "skip" else {}

    def wanted(self, path: Path) -> bool:
        if any(path.is_relative_to(d) for d in self.exclude):
            return False
        rel = path.relative_to(self.folder) if path.is_relative_to(self.folder) else path
        if any(part.startswith(".") for part in rel.parts):
            return False
        return path.suffix.lower() not in PARTIAL_SUFFIXES and is_image_file(path)

    def read(self, path: Path) -> bytes:
        """The file's bytes, read only where its real path lies inside the folder (a link to `/etc/shadow`, or to
        any file elsewhere, is an `OutsideFolder`, never read) and only from a regular file."""
        real = path.resolve()
        if not real.is_relative_to(self.folder) or any(real.is_relative_to(d) for d in self.exclude):
            raise OutsideFolder(f"{path} is a link to {real}, outside {self.folder}: skipped, never read")
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))  # swapped for a link meanwhile: ELOOP
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise OutsideFolder(f"{path} is not a regular file: skipped, never read")
            return f.read()

    def start(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        hot = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.is_directory or event.event_type not in WRITES:  # reading a file is not a change
                    return
                where = Path(str(getattr(event, "dest_path", "") or event.src_path))
                if event.event_type in COMPLETES:
                    hot.closed(where)
                else:
                    hot.seen(where)

        observer = PollingObserver(timeout=1.0) if self.poll else Observer()
        observer.schedule(Handler(), str(self.folder), recursive=True)
        observer.daemon = True
        observer.start()
        self.observer = observer
        now = time.monotonic()
        with self.lock:
            for path in self._files():
                if self.skipped.get(path) != _identity(path):
                    self.pending.setdefault(path, _Pending(now))
        self.skipped.clear()  # later changes to a skipped file arrive as events

    def _files(self) -> list[Path]:
        return [path for path in sorted(self.folder.rglob("*")) if self.wanted(path)]

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()  # type: ignore[attr-defined]
            self.observer.join(timeout=5)  # type: ignore[attr-defined]

    def seen(self, path: Path) -> None:
        if self.wanted(path):
            with self.lock:
                self.pending.setdefault(path, _Pending(time.monotonic())).closed = False

    def closed(self, path: Path) -> None:
        """Its writer closed it (inotify's IN_CLOSE_WRITE), or it was renamed into the folder: complete now, not
        after the settle time (which stays for folders without such events: network ones, other systems)."""
        if self.wanted(path):
            with self.lock:
                self.pending.setdefault(path, _Pending(time.monotonic())).closed = True

    def ready(self) -> tuple[list[Path], list[Path]]:
        """Files complete now (handed on once), and files that never completed within `max_wait_s` (dropped)."""
        now, complete, never = time.monotonic(), [], []
        with self.lock:
            for path, p in list(self.pending.items()):
                try:
                    st = path.stat()
                except FileNotFoundError:  # renamed or removed before it settled
                    del self.pending[path]
                    continue
                if p.closed and st.st_size > 0:
                    complete.append(path)
                    del self.pending[path]
                elif (st.st_size, st.st_mtime_ns) != (p.size, p.mtime_ns):
                    p.size, p.mtime_ns, p.stable_since = st.st_size, st.st_mtime_ns, now
                    if now - p.first_seen > self.max_wait_s:
                        never.append(path)
                        del self.pending[path]
                elif now - p.stable_since >= self.settle_s and st.st_size > 0:
                    complete.append(path)
                    del self.pending[path]
                elif now - p.first_seen > self.max_wait_s:
                    never.append(path)  # an empty file that stayed empty
                    del self.pending[path]
        return complete, never
