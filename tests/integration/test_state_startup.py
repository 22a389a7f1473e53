"""Start-up and durability of the station's state (issue 30, findings 15-18 and 22's read-only half): every create
and rename is synced with its folder, migrations run under a lock, a damaged or foreign database is refused in one
line and left as it was, the state folder is private, and a read-only one says so."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from kanoclip._files import atomic_write_bytes
from kanoclip.cli import main
from kanoclip.errors import ConfigError
from kanoclip.station import db
from kanoclip.station.station import Station
from kanoclip.station.store import BlobStore, sha256_of
from tests.support.station import base_run

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]


def inode(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """What reached the disk, in order: ("fsync", (dev, inode)) for each descriptor synced and ("replace", path)
    for each rename."""
    calls: list[tuple[str, Any]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        calls.append(("fsync", (st.st_dev, st.st_ino)))
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        real_replace(src, dst, **kwargs)
        calls.append(("replace", Path(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def synced_after(calls: list[tuple[str, Any]], renamed: Path) -> list[tuple[int, int]]:
    """The descriptors synced after `renamed` was renamed into place."""
    index = calls.index(("replace", renamed))
    return [what for kind, what in calls[index + 1 :] if kind == "fsync"]


# -- 15: a create or rename is synced together with its folder ------------------------------------------------------
def test_an_atomic_write_syncs_the_file_then_its_folder_and_each_folder_it_created(
    tmp_path: Path, syncs: list[tuple[str, Any]]
) -> None:
    target = tmp_path / "new" / "deeper" / "file.bin"
    atomic_write_bytes(target, b"data")
    index = syncs.index(("replace", target))
    assert ("fsync", inode(target)) in syncs[:index]  # the bytes before the name
    assert synced_after(syncs, target) == [inode(target.parent)]  # the name: one folder sync per rename
    synced = [what for kind, what in syncs if kind == "fsync"]
    assert inode(tmp_path) in synced and inode(tmp_path / "new") in synced  # the folders created on the way


def test_a_blob_put_syncs_one_folder_when_its_folder_exists(tmp_path: Path, syncs: list[tuple[str, Any]]) -> None:
    store = BlobStore(tmp_path / "state")
    first = store.put(b"first")
    assert synced_after(syncs, store.path(first)) == [inode(store.path(first).parent)]
    assert inode(store.root) in [what for kind, what in syncs if kind == "fsync"]  # its new folder blobs/xx
    same_folder = next(b"%d" % i for i in range(100_000) if sha256_of(b"%d" % i)[:2] == first[:2])
    syncs.clear()
    second = store.put(same_folder)
    assert [kind for kind, _ in syncs] == ["fsync", "replace", "fsync"]  # the file, its name, its folder: no more
    assert synced_after(syncs, store.path(second)) == [inode(store.path(second).parent)]


def test_opening_a_new_state_syncs_the_folders_it_created(tmp_path: Path, syncs: list[tuple[str, Any]]) -> None:
    state = tmp_path / "parent" / "state"
    Station.open(base_run(), state).engine.dispose()  # type: ignore[union-attr]
    synced = [what for kind, what in syncs if kind == "fsync"]
    for folder in (tmp_path, tmp_path / "parent", state):  # state's name, the database's and blobs' names
        assert inode(folder) in synced


# -- 16: any number of instances may migrate a new state at once ----------------------------------------------------
def test_instances_starting_together_on_a_new_state_all_come_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each instance reads the (empty) schema revision at the same moment, as two processes did: without a lock the
    second created alembic_version again and died."""
    state = tmp_path / "state"
    state.mkdir()
    together = threading.Barrier(4, timeout=1)
    first_read: set[int] = set()
    read = db.current_revision

    def current_revision(engine: Engine) -> str | None:
        if threading.get_ident() not in first_read:
            first_read.add(threading.get_ident())
            with contextlib.suppress(threading.BrokenBarrierError):  # one holds the lock: the others wait there
                together.wait()
        return read(engine)

    monkeypatch.setattr(db, "current_revision", current_revision)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            db.connect(db.database_url(state)).dispose()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    engine = db.connect(db.database_url(state))
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()


# -- 17: a damaged or foreign database: one line naming it, and the file untouched ----------------------------------
def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(capsys: pytest.CaptureFixture[str], path: Path) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("kanoclip: error: ") and "\n" not in err and "Traceback" not in err, err
    assert str(path) in err, err
    return err


@pytest.fixture
def garbage_state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    (state / db.DATABASE_FILE).write_bytes(os.urandom(8192))
    return state


def test_a_garbage_database_is_one_line_from_history_and_serve_and_stays_as_it_was(
    garbage_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = garbage_state / db.DATABASE_FILE
    before = sha256_file(file)
    assert main(["history", str(garbage_state)]) == 2
    assert "not a" in one_line_error(capsys, file)
    assert main(["serve", "--state", str(garbage_state), "--port", "0", *TINY_FLAGS]) == 2
    one_line_error(capsys, file)
    assert sha256_file(file) == before
    assert sorted(p.name for p in garbage_state.iterdir() if p.name != "blobs") == [db.DATABASE_FILE]


def damaged_station(state: Path) -> Path:
    """A station database with rows, then one of its table pages overwritten, as a bad disk would."""
    (state.parent / "healthy").mkdir()
    engine = db.connect(db.database_url(state.parent / "healthy"))
    with engine.begin() as connection:
        for i in range(400):
            connection.execute(
                text("INSERT INTO events (created_at, source, kind, detail) VALUES (0, :s, 'source_error', :d)"),
                {"s": f"/line/{i}", "d": "x" * 200},
            )
    engine.dispose()
    state.mkdir()
    data = bytearray((state.parent / "healthy" / db.DATABASE_FILE).read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[len(data) - 3 * page : len(data) - 2 * page] = os.urandom(page)
    file = state / db.DATABASE_FILE
    file.write_bytes(bytes(data))
    return file


def test_a_damaged_database_is_refused_by_history_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = damaged_station(tmp_path / "state")
    before = sha256_file(file)
    assert main(["history", str(file.parent)]) == 2
    assert "damaged" in one_line_error(capsys, file)
    assert sha256_file(file) == before


def test_a_foreign_sqlite_file_is_refused_untouched(tmp_path: Path) -> None:
    """Another program's database where the station's should be: not migrated into (nor switched to WAL)."""
    state = tmp_path / "state"
    state.mkdir()
    file = state / db.DATABASE_FILE
    with sqlite3.connect(file) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        connection.execute("INSERT INTO invoices (total) VALUES (12.5)")
    connection.close()
    before = sha256_file(file)
    with pytest.raises(ConfigError, match="not a kanoclip station database") as raised:
        Station.open(base_run(), state)
    assert str(file) in str(raised.value) and "invoices" in str(raised.value)
    assert sha256_file(file) == before


def test_a_station_database_missing_a_table_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    engine = db.connect(db.database_url(state))
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE events"))
    engine.dispose()
    with pytest.raises(ConfigError, match="events"):
        db.connect(db.database_url(state))


# -- 18: the state folder and its subfolders are private ------------------------------------------------------------
def test_the_state_folder_and_its_subfolders_are_created_0700(tmp_path: Path) -> None:
    state = tmp_path / "state"
    station = Station.open(base_run(), state)
    assert station.store is not None
    blob = station.store.path(station.store.put(b"a part"))
    for folder in (state, state / "blobs", blob.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    station.engine.dispose()  # type: ignore[union-attr]


# -- 22: a read-only state folder says it is read-only, not that the network is down --------------------------------
@contextmanager
def as_nobody() -> Iterator[None]:
    """As a user who may not write a 0555 folder (root may write anywhere)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    outer = Path(tempfile.mkdtemp(prefix="kanoclip-ro-"))  # pytest's tmp_path is 0700 to root
    try:
        os.chmod(outer, 0o755)
        folder = outer / "state"
        folder.mkdir(mode=0o555)
        os.chmod(folder, 0o555)
        yield folder
    finally:
        os.chmod(outer / "state", 0o755)
        shutil.rmtree(outer)


def test_a_read_only_state_folder_says_so(read_only_folder: Path) -> None:
    with as_nobody(), pytest.raises(ConfigError) as raised:
        Station.open(base_run(), read_only_folder)
    message = str(raised.value)
    assert "read-only" in message and str(read_only_folder) in message and "\n" not in message, message
    assert "server" not in message, message
