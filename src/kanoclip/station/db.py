"""The station's database: one schema (SQLAlchemy Core) in an embedded SQLite file or in PostgreSQL, created and
upgraded only by Alembic migrations (`kanoclip/migrations`), so every dialect gets the same tables from one history.

`connect` refuses, before anything is written, a database it cannot reach, one that a newer kanoclip migrated
past this version's last revision, and a SQLite file that is damaged or another program's; it migrates under a lock
(a lock file beside a SQLite file, an advisory lock on PostgreSQL) so any number of instances may start together.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from kanoclip._files import sync_folder
from kanoclip.errors import ConfigError

DATABASE_FILE = "station.sqlite"
POSTGRES_EXTRA = "pip install 'kanoclip[postgres]'  (psycopg)"
# pg_advisory_lock's key for migrations: one per database (advisory locks are scoped to the database)
MIGRATION_LOCK_KEY = int.from_bytes(hashlib.sha256(b"kanoclip.station.migrations").digest()[:8], "big", signed=True)
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
# An id column that counts past 2**31 on PostgreSQL and is SQLite's rowid there (what makes AUTOINCREMENT work)
BIG_ID = BigInteger().with_variant(Integer, "sqlite")

metadata = MetaData()

profiles = Table(
    "profiles",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("uid", String(32), nullable=False),  # this profile, not its name: one deleted and created again differs
    Column("class_name", String(200)),  # training-free text; None: the checkpoint's learned prompts
    Column("checkpoint", Text),
    Column("engine", String(16), nullable=False),
    Column("exported", Text),
    Column("model_changes", JSON, nullable=False),  # [[field, value], ...]: the model options on the default config
    Column("bank_sha256", String(64)),  # the bank file (safetensors) in the store; None: zero-shot
    Column("thresholds", JSON, nullable=False),  # Thresholds.to_dict(): values and the basis they were set on
    Column("version", Integer, nullable=False),  # +1 on every change: how other instances notice one
    Column("model_version", Integer),  # the model version in use (`model_versions`); None: the model it was given
    Column("rollback", JSON),  # [{version, model, thresholds}, ...]: what each promote replaced, newest last
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

references = Table(
    "profile_references",
    metadata,
    Column("profile", String(64), ForeignKey("profiles.name", ondelete="CASCADE"), primary_key=True),
    Column("sha256", String(64), primary_key=True),  # the good part's bytes in the store
    Column("source", Text, nullable=False),
    Column("added_at", Float, nullable=False),
)

results = Table(
    "results",
    metadata,
    Column("id", BIG_ID, primary_key=True, autoincrement=True),
    Column("created_at", Float, nullable=False),  # seconds since the epoch, UTC
    Column("profile", String(64), nullable=False),  # no foreign key: deleting a profile keeps its history
    Column("source", Text, nullable=False),
    Column("image_sha256", String(64)),
    Column("overlay_sha256", String(64)),
    Column("map_sha256", String(64)),
    Column("stored_bytes", BigInteger, nullable=False),  # what this row's files hold, for --max-store-gb
    Column("score", Float),
    Column("label", Integer),
    Column("error", Text),
    Column("image_threshold", Float),
    Column("pixel_threshold", Float),
    Column("threshold_basis", JSON),
    Column("threshold_stale", Text),  # why the threshold did not fit when this image was labelled, if so
    Column("bank_id", String(16)),
    Column("backbone_fingerprint", String(64)),
    Column("checkpoint_sha256", String(64)),
    Column("engine", Text),
    Column("precision", String(8)),
    Column("latency_ms", Float),
    Column("instance", String(64)),
    Column("frame_index", BigInteger),  # a video's or stream's frame, when the result is one
    Column("frame_time", Float),  # its time in the video (seconds), or when it was read from a stream
    Column("defect_type", String(100)),  # judged anomalous: its likeliest defect type, or "unknown"
    Column("defect_type_p", Float),  # that type's probability
    Index("results_profile_id", "profile", "id"),
    Index("results_created_at", "created_at"),
    Index("results_image_sha256", "image_sha256"),  # retention: does a row still name this file?
    Index("results_overlay_sha256", "overlay_sha256"),
    Index("results_map_sha256", "map_sha256"),
    sqlite_autoincrement=True,  # a pruned result's id is never given to another one
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", BIG_ID, primary_key=True, autoincrement=True),
    Column("result_id", BIG_ID, ForeignKey("results.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("verdict", String(8), nullable=False),  # good | defect
    Column("profile_uid", String(32), index=True),  # the profile it teaches (profiles.uid); None: none any more
    Column("note", Text),
    Column("created_at", Float, nullable=False),
    Column("defect_type", String(100)),  # a "defect" verdict's type, which makes the image an example of it
)

defect_examples = Table(
    "defect_examples",
    metadata,
    Column("profile_uid", String(32), primary_key=True),  # the profile it teaches (profiles.uid)
    Column("sha256", String(64), primary_key=True),  # the image in the store: one type per image, the latest said
    Column("type", String(100), nullable=False),
    Column("source", Text, nullable=False),
    Column("added_at", Float, nullable=False),
)


claims = Table(
    "claims",
    metadata,
    Column("key", String(64), primary_key=True),  # sha256 of profile, path and content: one file, one result
    Column("profile", String(64), nullable=False),
    Column("source", Text, nullable=False),
    Column("claimed_by", String(64), nullable=False),
    Column("claimed_at", Float, nullable=False),
    Column("result_id", BIG_ID),  # set in the transaction that records the result: done
)

events = Table(
    "events",
    metadata,
    Column("id", BIG_ID, primary_key=True, autoincrement=True),
    Column("created_at", Float, nullable=False),
    Column("profile", String(64)),
    Column("source", Text, nullable=False),
    # stream_gap | webhook_failed | mqtt_failed | opcua_failed | source_error | never_completed
    Column("kind", String(32), nullable=False),
    Column("detail", Text),
    Column("instance", String(64)),
    Index("events_created_at", "created_at"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),  # adapt
    Column("profile", String(64), nullable=False),
    Column("profile_uid", String(32), nullable=False),  # the profile it was started for, not another of its name
    Column("state", String(12), nullable=False),  # running | done | failed | cancelled
    Column("settings", JSON, nullable=False),
    Column("phase", String(16), nullable=False),  # starting, data, training, evaluating, saving; then its end state
    Column("step", Integer, nullable=False),
    Column("steps", Integer),  # the training steps it will take, once known
    Column("owner", String(64), nullable=False),  # the server that runs it: host:pid
    Column("heartbeat_at", Float, nullable=False),  # its worker's last sign of life
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("error", Text),
    Column("version", Integer),  # the model version it made
    Index("jobs_profile_created_at", "profile", "created_at"),
)
# one running job per profile, held by the database (two servers, or two requests, starting one together)
Index(
    "jobs_one_running",
    jobs.c.profile_uid,
    unique=True,
    sqlite_where=jobs.c.state == "running",
    postgresql_where=jobs.c.state == "running",
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", BIG_ID, primary_key=True, autoincrement=True),
    Column("profile", String(64), nullable=False),
    Column("profile_uid", String(32), nullable=False),
    Column("version", Integer, nullable=False),  # 1, 2, ... per profile
    Column("job_id", String(32), nullable=False),
    Column("checkpoint", Text, nullable=False),  # state:models/<profile uid>/<job id>: its folder in the state
    Column("model_changes", JSON, nullable=False),  # where its frozen CLIP is found (backbone options), as a profile's
    Column("parent", JSON, nullable=False),  # {version, model}: what was current when its job started
    Column("parts", JSON, nullable=False),  # sha256 of the good parts it was adapted from
    Column("config", JSON, nullable=False),  # {model, train, adapt}: the settings it was made with
    Column("numbers", JSON, nullable=False),  # the shadow evaluation: {new, current}, each with its counts
    Column("shadow", JSON, nullable=False),  # per history row: [result_id, label, new score, current score]
    Column("thresholds", JSON, nullable=False),  # calibrated as `calibrate` does, set when it is promoted
    Column("created_at", Float, nullable=False),
    Index("model_versions_profile_version", "profile_uid", "version", unique=True),
)

sink_outbox = Table(
    "sink_outbox",
    metadata,
    Column("id", BIG_ID, primary_key=True, autoincrement=True),  # the order messages are published in
    Column("sink", String(200), nullable=False),  # which sink, where (no password): "mqtt://host:1883/line"
    Column("topic", Text, nullable=False),
    Column("payload", Text, nullable=False),  # the message as sent (JSON)
    Column("instance", String(64), nullable=False),  # the sink that queued it: host:pid:token (`sinks.outbox`)
    Column("created_at", Float, nullable=False),
    Index("sink_outbox_sink_id", "sink", "id"),
)


# Every column that names a file in the store: a file goes only once none of them names it (retention, backup)
FILE_COLUMNS = (
    results.c.image_sha256,
    results.c.overlay_sha256,
    results.c.map_sha256,
    references.c.sha256,
    profiles.c.bank_sha256,
    defect_examples.c.sha256,
)


def database_url(state: Path) -> str:
    return f"sqlite:///{state / DATABASE_FILE}"


def hidden(url: str) -> str:
    """The URL as it may be printed: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def create(url: str) -> Engine:
    """An engine for `url`; SQLite in WAL mode with full syncs (a committed row survives a crash of the process and
    of the machine) and foreign keys on."""
    try:
        parsed = make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):  # psycopg 3, the driver the postgres extra installs
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = create_engine(parsed, pool_pre_ping=True)
    except NoSuchModuleError as e:
        raise ConfigError(f"{hidden(url)}: not a database URL kanoclip knows (sqlite:///FILE, postgresql://...)") from e
    except ArgumentError as e:
        raise ConfigError(f"{url!r} is not a database URL ({e}); e.g. postgresql://user@host/kanoclip") from e
    except ModuleNotFoundError as e:
        raise ConfigError(f"{hidden(url)} needs the {e.name} driver: {POSTGRES_EXTRA}") from e
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(connection: object, _: object) -> None:
    cursor = connection.cursor()  # type: ignore[attr-defined]
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _alembic_config(engine: Engine) -> object:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(None)).get_current_head()  # type: ignore[arg-type]
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database was migrated to, None for an empty one; an unreachable server is a clear error."""
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return None
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except OperationalError as e:
        raise unreachable(engine, e) from e


def unreachable(engine: Engine, e: OperationalError) -> ConfigError:
    """Why a database cannot be used, in one line: a SQLite file cannot be opened (no network to blame), a server
    cannot be reached."""
    reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e).splitlines()[0]
    file = sqlite_file(str(engine.url))
    if file is not None:
        return ConfigError(f"cannot open the database {file}: {reason}{read_only_hint(file.parent)}")
    return ConfigError(
        f"cannot reach the database {hidden(str(engine.url))}: {reason}; is the server running and the URL right?"
    )


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names; None for another dialect or an in-memory database."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return None if parsed.database.startswith("file:") else Path(parsed.database)


def read_only_hint(folder: Path) -> str:
    return "" if os.access(folder, os.W_OK) else f"; its folder {folder} is read-only to this user"


def check_sqlite_file(file: Path) -> None:
    """Refuse, in one line and before anything writes to it (journal mode included), a SQLite file that is not a
    database, fails `PRAGMA quick_check`, or holds another program's tables: migrating into it would change it."""
    try:
        connection = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.OperationalError as e:
        raise ConfigError(f"cannot open the database {file}: {e}{read_only_hint(file.parent)}") from e
    try:
        problems = [row[0] for row in connection.execute("PRAGMA quick_check").fetchall()]
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not row[0].startswith("sqlite_")
        }
    except sqlite3.DatabaseError as e:
        if "not a database" in str(e):
            raise ConfigError(
                f"{file} is not a kanoclip station database ({e}): move it away or give another --state; "
                "nothing was changed"
            ) from e
        problems = [str(e)]
    finally:
        connection.close()
    if problems != ["ok"]:
        shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        raise ConfigError(
            f"{file} is damaged (PRAGMA quick_check: {shown}): restore it from a backup or move it away; "
            "nothing was changed"
        )
    foreign = sorted(tables - set(metadata.tables))
    if foreign and "alembic_version" not in tables:
        raise ConfigError(
            f"{file} is not a kanoclip station database (it holds other tables: {', '.join(foreign[:5])}): move it "
            "away or give another --state; nothing was changed"
        )


def check_schema(engine: Engine, revision: str) -> None:
    """A database at this kanoclip's revision holds every table of its schema (one was dropped by hand, or the
    file is damaged, when not)."""
    try:
        with engine.connect() as connection:
            present = set(inspect(connection).get_table_names())
    except OperationalError as e:
        raise unreachable(engine, e) from e
    missing = sorted(set(metadata.tables) - present)
    if missing:
        raise ConfigError(
            f"the database {hidden(str(engine.url))} is at schema revision {revision} but lacks the table(s) "
            f"{', '.join(missing)}: it was damaged or edited; restore it from a backup; nothing was changed"
        )


@contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Held while the schema is read and migrated, so instances starting together migrate one after the other
    (the second then finds the schema current): `pg_advisory_lock` on PostgreSQL, `flock` on a lock file beside a
    SQLite file. Opening that file is also where a read-only state folder is found."""
    if engine.dialect.name == "postgresql":
        try:
            connection = engine.connect()
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()
        except OperationalError as e:
            raise unreachable(engine, e) from e
        try:
            yield
        finally:
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                connection.commit()
            finally:
                connection.close()  # a lost connection releases the lock on the server anyway
        return
    file = sqlite_file(str(engine.url))
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one instance at a time there
        fcntl = None  # type: ignore[assignment]
    if file is None or fcntl is None:
        yield
        return
    lock = file.with_name(file.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        if e.errno in READ_ONLY:
            raise ConfigError(
                f"the state folder {file.parent} is read-only ({e.strerror}): the station writes its database "
                "there; give a writable --state or fix its permissions"
            ) from e
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def connect(url: str, upgrade: bool = True) -> Engine:
    """An engine on a database at this kanoclip's schema: migrated up from any earlier revision (or created) under
    the migration lock, and refused, untouched, when a newer kanoclip wrote it, when a SQLite file is damaged or
    another program's, or when tables of the current schema are missing."""
    file = sqlite_file(url)
    created = file is not None and not file.exists()
    if file is not None and not created:
        check_sqlite_file(file)  # before the engine's first connection sets WAL mode, which writes to the file
    engine = create(url)
    try:
        with migration_lock(engine) if upgrade else nullcontext():
            revision = _migrate(engine, url, upgrade)
        if revision == head_revision():
            check_schema(engine, revision)
    except BaseException:
        engine.dispose()
        raise
    if created and file is not None:
        sync_folder(file.parent)  # the new database's name (SQLite syncs what it writes into it)
    return engine


def _migrate(engine: Engine, url: str, upgrade: bool) -> str | None:
    """Read the revision and, with `upgrade`, migrate to head; the revision the database is at now."""
    from alembic import command
    from alembic.script import ScriptDirectory

    config = _alembic_config(engine)
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}  # type: ignore[arg-type]
    revision = current_revision(engine)
    if revision is not None and revision not in known:
        raise ConfigError(
            f"the database {hidden(url)} was written by a newer kanoclip (schema revision {revision}): upgrade "
            "kanoclip (pip install -U kanoclip) to use it; nothing was changed"
        )
    if upgrade and revision != head_revision():
        command.upgrade(config, "head")  # type: ignore[arg-type]
        return head_revision()
    return revision


PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_profile_name(name: str) -> str:
    """A profile name that is safe in URLs, file names and logs: 1-64 letters, digits, `_`, `.`, `-`, not starting
    with a dot (so never `..`)."""
    if not PROFILE_NAME.fullmatch(name) or ".." in name:
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise ConfigError(
            f"{shown!r} is not a profile name: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or "
            "digit (no '/', no '..')"
        )
    return name
