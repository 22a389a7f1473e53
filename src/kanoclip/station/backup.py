"""`kanoclip station backup`: a copy of a running station's state that opens as a station.

The rule: the database is copied first, as one consistent snapshot (SQLite's online backup API, while the station
keeps writing), then every file its rows, good parts and banks name; a file retention removed in between is reported,
never invented. PostgreSQL keeps its rows itself: the files are copied and the `pg_dump` command to run is returned.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, select

from kanoclip._files import atomic_write_bytes, make_folders
from kanoclip.errors import ConfigError
from kanoclip.station import db
from kanoclip.station.store import FOLDER_MODE, BlobStore


@dataclass
class BackupReport:
    files: int
    missing: int
    pg_dump: str | None = None  # for PostgreSQL: the command that copies the rows


def backup(state: Path, out: Path, database: str | None = None) -> BackupReport:
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty: give a new folder for the backup")
    make_folders(out, FOLDER_MODE)
    pg_dump = None
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
        pg_dump = f"pg_dump --format=custom --file {out / 'station.pgdump'} '{db.hidden(database)}'"
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            r = db.results.c
            named = {h for row in c.execute(select(r.image_sha256, r.overlay_sha256, r.map_sha256)) for h in row if h}
            named |= {h for (h,) in c.execute(select(db.references.c.sha256))}
            named |= {h for (h,) in c.execute(select(db.profiles.c.bank_sha256)) if h}
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
        atomic_write_bytes(target_store.path(sha), path.read_bytes())  # synced, never half a file
        copied += 1
    return BackupReport(copied, missing, pg_dump)
