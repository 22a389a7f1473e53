"""`kanoclip station backup`: a copy of a running station's state that opens as a station.

The rule: the database is copied first, as one consistent snapshot (SQLite's online backup API, or `pg_dump`'s
snapshot of a PostgreSQL database, while the station keeps writing), then every file its rows, good parts and banks
name, read after the snapshot, so each row the copy holds has its file; a file retention removed in between is
reported, never invented. A PostgreSQL copy is restored with `pg_restore` into a new database (`RESTORE`).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from sqlalchemy import Connection, create_engine, select, text
from sqlalchemy.engine import make_url

from kanoclip._files import atomic_write_bytes, make_folders
from kanoclip.errors import ConfigError
from kanoclip.station import db
from kanoclip.station.check import version_folder
from kanoclip.station.store import FILE_MODE, FOLDER_MODE, BlobStore

PG_DUMP_FILE = "station.pgdump"
PG_DUMP_TIMEOUT_S = 6 * 3600  # a dump that hangs (a lock never granted) ends with an error, not never
RESTORE = "createdb NEW && pg_restore --no-owner --dbname NEW {dump}; then serve --state {out} --database .../NEW"
PG_CLIENT = "install PostgreSQL's client programs (Debian: apt install postgresql-client) or put pg_dump on PATH"


@dataclass
class BackupReport:
    files: int
    missing: int
    restore: str | None = None  # for PostgreSQL: how to restore the dump


def _versions(c: Connection) -> list[str]:
    """The folders of the model versions the rows name (`state:models/...`)."""
    return list(c.execute(select(db.model_versions.c.checkpoint)).scalars())


def _named(c: Connection) -> set[str]:
    """Every file the rows name: results' images, overlays and maps, good parts, banks, defect examples."""
    return {h for column in db.FILE_COLUMNS for (h,) in c.execute(select(column)) if h}


def pg_dump_binary() -> str:
    binary = shutil.which("pg_dump")
    if binary is None:
        raise ConfigError(f"pg_dump is not installed: {PG_CLIENT}")
    return binary


def pg_dump(url: str, out: Path, snapshot: str | None = None) -> None:
    """The database's rows into `out` (pg_dump's custom format: one consistent snapshot), its password passed in the
    environment, never on a command line other users can read."""
    binary = pg_dump_binary()
    u = make_url(url)
    env = {**os.environ, **({"PGPASSWORD": u.password} if u.password else {})}
    target = f"postgresql://{quote(u.username or '')}@{u.host or ''}{f':{u.port}' if u.port else ''}/{u.database or ''}"
    if u.query:  # sslmode and the like, as the station connects
        target += "?" + urlencode(u.query, doseq=True)
    done = subprocess.run(
        [
            binary,
            "--format=custom",
            "--no-password",
            *(["--snapshot", snapshot] if snapshot else []),
            "--file",
            str(out),
            target,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=PG_DUMP_TIMEOUT_S,
    )
    if done.returncode != 0:
        out.unlink(missing_ok=True)
        raise ConfigError(f"pg_dump of {db.hidden(url)} failed: {done.stderr.strip() or done.returncode}")


def backup(state: Path, out: Path, database: str | None = None) -> BackupReport:
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty: give a new folder for the backup")
    make_folders(out, FOLDER_MODE)
    restore = None
    if database is None:
        source = sqlite3.connect((state / db.DATABASE_FILE).resolve().as_uri() + "?mode=ro", uri=True)
        target = sqlite3.connect(out / db.DATABASE_FILE)
        try:
            source.backup(target)  # pages copied consistently while writers go on
        finally:
            source.close()
            target.close()
        url = db.database_url(out)
    else:
        url = database
        pg_dump_binary()  # missing: said before anything connects
        restore = RESTORE.format(dump=out / PG_DUMP_FILE, out=out)
    engine = create_engine(url)
    try:
        if database is None:
            with engine.connect() as c:
                named, versions = _named(c), _versions(c)
        else:
            # one snapshot for the dump and for the names: the transaction that exports it stays open while
            # pg_dump reads through it, so the files copied are exactly those the dumped rows name
            with engine.connect().execution_options(isolation_level="REPEATABLE READ") as c, c.begin():
                snapshot = c.execute(text("SELECT pg_export_snapshot()")).scalar_one()
                named, versions = _named(c), _versions(c)
                pg_dump(database, out / PG_DUMP_FILE, snapshot)
    finally:
        engine.dispose()
    source_store, target_store = BlobStore(state), BlobStore(out)
    copied = missing = 0
    for sha in sorted(named):
        path = source_store.path(sha)
        if not path.is_file():
            missing += 1
            continue
        make_folders(target_store.path(sha).parent, FOLDER_MODE)
        atomic_write_bytes(target_store.path(sha), path.read_bytes(), FILE_MODE)  # synced, never half a file
        copied += 1
    for checkpoint in versions:  # a version is never changed once its row exists: its files copy as they are
        folder, into = version_folder(source_store, checkpoint), version_folder(target_store, checkpoint)
        if not folder.is_dir():
            missing += 1
            continue
        for file in sorted(folder.iterdir()):
            make_folders(into, FOLDER_MODE)
            atomic_write_bytes(into / file.name, file.read_bytes(), FILE_MODE)
            copied += 1
    return BackupReport(copied, missing, restore)
