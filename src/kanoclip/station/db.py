"""The station's database: one schema (SQLAlchemy Core) in an embedded SQLite file or in PostgreSQL, created and
upgraded only by Alembic migrations (`kanoclip/migrations`), so every dialect gets the same tables from one history.

`connect` refuses, before anything is written, a database it cannot reach and one that a newer kanoclip migrated
past this version's last revision.
"""

from __future__ import annotations

import re
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

from kanoclip.errors import ConfigError

DATABASE_FILE = "station.sqlite"
POSTGRES_EXTRA = "pip install 'kanoclip[postgres]'  (psycopg)"
# An id column that counts past 2**31 on PostgreSQL and is SQLite's rowid there (what makes AUTOINCREMENT work)
BIG_ID = BigInteger().with_variant(Integer, "sqlite")

metadata = MetaData()

profiles = Table(
    "profiles",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("class_name", String(200)),  # training-free text; None: the checkpoint's learned prompts
    Column("checkpoint", Text),
    Column("engine", String(16), nullable=False),
    Column("exported", Text),
    Column("model_changes", JSON, nullable=False),  # [[field, value], ...]: the model options on the default config
    Column("bank_sha256", String(64)),  # the bank file (safetensors) in the store; None: zero-shot
    Column("thresholds", JSON, nullable=False),  # Thresholds.to_dict(): values and the basis they were set on
    Column("version", Integer, nullable=False),  # +1 on every change: how other instances notice one
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
    Index("results_profile_id", "profile", "id"),
    Index("results_created_at", "created_at"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", BIG_ID, primary_key=True, autoincrement=True),
    Column("result_id", BIG_ID, ForeignKey("results.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("verdict", String(8), nullable=False),  # good | defect
    Column("note", Text),
    Column("created_at", Float, nullable=False),
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
    Column("kind", String(32), nullable=False),  # stream_gap | webhook_failed | source_error | never_completed
    Column("detail", Text),
    Column("instance", String(64)),
    Index("events_created_at", "created_at"),
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
        reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
        raise ConfigError(
            f"cannot reach the database {hidden(str(engine.url))}: {reason}; is the server running and the URL right?"
        ) from e


def connect(url: str, upgrade: bool = True) -> Engine:
    """An engine on a database at this kanoclip's schema: migrated up from any earlier revision (or created), and
    refused, untouched, when a newer kanoclip wrote it."""
    from alembic import command
    from alembic.script import ScriptDirectory

    engine = create(url)
    config = _alembic_config(engine)
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}  # type: ignore[arg-type]
    revision = current_revision(engine)
    if revision is not None and revision not in known:
        engine.dispose()
        raise ConfigError(
            f"the database {hidden(url)} was written by a newer kanoclip (schema revision {revision}): upgrade "
            "kanoclip (pip install -U kanoclip) to use it; nothing was changed"
        )
    if upgrade and revision != head_revision():
        command.upgrade(config, "head")  # type: ignore[arg-type]
    return engine


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
