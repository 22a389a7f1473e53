"""`kanoclip serve`, `kanoclip watch`, `kanoclip history` and `kanoclip station`: the inspection station, what it
recorded, and its state (its adapt jobs and model versions: `station_api`)."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kanoclip.cli.common import MODEL, read_key, run_config, run_section
from kanoclip.cli.flags import Command, Parsed, Section
from kanoclip.cli.station_api import API_COMMANDS
from kanoclip.errors import ConfigError
from kanoclip.inference.config import RunConfig
from kanoclip.labels import Label, word
from kanoclip.options import option
from kanoclip.station.config import ServeConfig, StationConfig
from kanoclip.station.sinks.config import SinkConfig
from kanoclip.station.watch.config import WatchConfig


def default_state() -> Path:
    from platformdirs import user_data_path

    return user_data_path("kanoclip") / "station"


def open_station(parsed: Parsed, must_exist: bool = False) -> Any:
    """The station the flags name, with the `--profile` created or changed by the model flags (`must_exist`: an
    unknown profile without model flags is an error, not a new training-free profile)."""
    from kanoclip.station.db import check_profile_name, hidden
    from kanoclip.station.station import Station

    where, run = parsed.get(StationConfig), run_config(parsed)
    check_profile_name(where.profile)
    keep = not where.no_state
    if not keep and where.database:
        raise ConfigError("--no-state keeps nothing: drop --database (or --no-state)")
    state = Path(where.state).expanduser() if where.state else default_state()
    base = run.replace(class_name=None, references=(), calibration=None, image_threshold=None)
    station = Station.open(base, state if keep else None, where.database)
    if keep:
        shown = hidden(where.database) if where.database else str(state)
        print(f"kanoclip: state in {state} (database: {shown})", flush=True)
    defaults = RunConfig(**{k: getattr(run, k) for k in ("device", "precision", "batch_size", "workers", "compile")})
    asked = run.replace(max_pixels=defaults.max_pixels, user_set=())
    if must_exist and where.profile not in station.profiles and asked == defaults:
        known = ", ".join(sorted(station.profiles)) or "none yet"
        raise ConfigError(
            f"no profile {where.profile!r} in {state} (profiles: {known}): give model flags (--class-name, "
            "--checkpoint, --reference, ...) to create it"
        )
    profile = station.configure(where.profile, run)
    det = station.detector(where.profile)
    bank = det.references
    print(
        f"profile {profile.name!r}: {profile.class_name or 'object'}, "
        f"{bank.images if bank else 0} good part(s), threshold {det.thresholds.image_threshold}"
    )
    return station


def serve_command(parsed: Parsed) -> int:
    from kanoclip.station.serve import listen, serve

    config, where = parsed.get(ServeConfig), parsed.get(StationConfig)
    key = read_key(config.api_key_file)
    if config.api_key:
        print("kanoclip: warning: --api-key is visible to every user of this machine in `ps`: use --api-key-file")
        key = config.api_key
    config = dataclasses.replace(
        config, api_key=key, allowed_hosts=(config.host, *config.allowed_hosts), sinks=parsed.get(SinkConfig)
    )
    if config.host not in ("127.0.0.1", "localhost", "::1") and key is None:
        print(f"kanoclip: warning: serving on {config.host} without an API key: anyone who can reach it can use it")
    sock = listen(config.host, config.port)  # a port in use is said before the model loads
    try:
        station = open_station(parsed)
    except BaseException:
        sock.close()  # a refused state is one line, not one line and an unclosed-socket warning
        raise
    serve(station, sock, config, where.profile)
    return 0


@dataclass(frozen=True, kw_only=True)
class WatchOptions:
    sources: tuple[str, ...] = option(
        positional=True,
        metavar="SOURCE",
        help="a folder to watch, a video file, a camera (/dev/video0) or a stream (rtsp://..., http://... MJPEG)",
    )
    server: str | None = option(None, metavar="URL", help="score through a running `kanoclip serve` instead of here")
    api_key_file: str | None = option(None, metavar="FILE", help="the --server's API key (or env KANOCLIP_API_KEY)")
    metrics_port: int | None = option(None, group="sinks", help="serve Prometheus /metrics on 127.0.0.1:PORT")


def watch_command(parsed: Parsed) -> int:
    from kanoclip.station.watch.watcher import LocalScorer, RemoteScorer, Watcher

    o, where, run = parsed.get(WatchOptions), parsed.get(StationConfig), run_config(parsed)
    cfg = dataclasses.replace(
        parsed.get(WatchConfig), profile=where.profile, batch=run.batch_size, sinks=parsed.get(SinkConfig)
    )
    cfg = dataclasses.replace(cfg, fps=cfg.fps or None)  # 0: every frame
    scorer: Any
    if o.server:
        scorer = RemoteScorer(o.server, where.profile, read_key(o.api_key_file), cfg.claim_timeout_s)
    else:
        scorer = LocalScorer(open_station(parsed, must_exist=True), where.profile)
    watcher = Watcher(scorer, list(o.sources), cfg)
    if o.metrics_port is not None:
        from prometheus_client import start_http_server

        from kanoclip.station.telemetry import ServeMetrics

        metrics = ServeMetrics()
        start_http_server(o.metrics_port, addr="127.0.0.1", registry=metrics.registry)
        watcher.on_result = lambda r: metrics.observe_detection(
            where.profile, r.get("score"), r.get("label"), r.get("defect_type")
        )
    print(f"kanoclip watch: {', '.join(o.sources)} -> profile {where.profile!r} (Ctrl-C stops)", flush=True)
    counts = watcher.run()
    print(
        f"{counts['scored']} scored, {counts['defect']} defect, {counts['failed']} failed, "
        f"{counts['skipped']} already done"
    )
    return 0


@dataclass(frozen=True, kw_only=True)
class HistoryOptions:
    where: str = option(positional=True, metavar="DIR|URL", help="a --state folder, or a --database URL")
    profile: str | None = option(None, help="one profile's results")
    since: str | None = option(None, help="from this time (ISO 8601, UTC unless it says otherwise)")
    until: str | None = option(None, help="before this time")
    label: str | None = option(None, help="only good or defect results (0/1 and ok/ng still accepted)")
    limit: int = option(20, help="the newest N rows (--csv: all)")
    csv: bool = option(False, help="every matching row as CSV on stdout")


def history_command(parsed: Parsed) -> int:
    from sqlalchemy import Engine

    from kanoclip.station import db as database
    from kanoclip.station.serve import history_csv
    from kanoclip.station.station import Station, iso, parse_time

    o = parsed.get(HistoryOptions)
    if o.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {o.limit}")
    if "://" in o.where:
        url = o.where
    else:
        folder = Path(o.where).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"{folder}: no such folder: give a --state folder or a --database URL")
        if not (folder / database.DATABASE_FILE).is_file():
            raise ConfigError(f"{folder} holds no station database ({database.DATABASE_FILE}): give a --state folder")
        url = database.database_url(folder)
    engine: Engine = database.connect(url, upgrade=False)
    if database.current_revision(engine) != database.head_revision():
        raise ConfigError(f"{database.hidden(url)} has an older schema: start `kanoclip serve` on it once to migrate")
    station = Station(RunConfig(), engine, None)
    filters: dict[str, Any] = {
        "profile": o.profile,
        "since": parse_time(o.since),
        "until": parse_time(o.until),
        "label": None if o.label is None else int(Label.parse(o.label)),
    }
    if o.csv:
        for chunk in history_csv(station.iter_results(**filters)):
            sys.stdout.write(chunk)
        return 0
    rows, _ = station.results(**filters, limit=o.limit)
    if rows:
        print(f"{'id':>8}  {'time':<24}  {'profile':<16} {'score':>8}  {'label':<6}  {'verdict':<7} source")
    for row in rows:
        label = word(row["label"]) if row["error"] is None else "error"
        score = "-" if row["score"] is None else f"{row['score']:.4f}"
        verdict = row.get("verdict") or "-"  # what a person said of it, beside what the model said
        shown = f"{row['id']:>8}  {iso(row['created_at'])}  {row['profile']:<16} {score:>8}  {label:<6}  {verdict:<7}"
        print(f"{shown} {row['source']}")
    if not rows:
        print("no results match")
    return 0


@dataclass(frozen=True, kw_only=True)
class CheckOptions:
    where: str = option(positional=True, metavar="DIR", help="a --state folder")
    database: str | None = option(None, metavar="URL", help="its --database, when the rows live in PostgreSQL")
    fix: bool = option(False, help="remove orphan files (nothing names them; past the put grace)")


def check_command(parsed: Parsed) -> int:
    from kanoclip.station import db as database
    from kanoclip.station.check import check
    from kanoclip.station.store import BlobStore

    o = parsed.get(CheckOptions)
    folder = Path(o.where).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder: give a --state folder")
    url = o.database or database.database_url(folder)
    if o.database is None and not (folder / database.DATABASE_FILE).is_file():
        raise ConfigError(f"{folder} holds no station database ({database.DATABASE_FILE}): give a --state folder")
    report = check(database.connect(url, upgrade=False), BlobStore(folder), o.fix)
    print(f"{report.rows} result(s), {report.files} stored file(s)")
    for owner, sha in report.dangling[:20]:
        print(f"  missing: {sha[:16]}... named by {owner}", file=sys.stderr)
    print(f"{len(report.dangling)} missing file(s), {len(report.orphans)} orphan file(s), {report.removed} removed")
    return 0 if report.clean else 1


SERVE_EPILOG = """examples:
  kanoclip serve --preset kanoclip-tiny --no-state --port 8123     offline smoke run: http://127.0.0.1:8123/
  kanoclip serve --checkpoint runs/mvtec/final                        http://127.0.0.1:8000/ in a browser
  kanoclip serve --host 0.0.0.0 --api-key-file /etc/kanoclip/key --allowed-host inspect.example.com   shared
  curl -F files=@part.png http://127.0.0.1:8000/v1/detect

  kanoclip serve --profile bottle --class-name bottle --reference good_bottles/   a profile, kept in the state folder
  kanoclip serve --state /srv/kanoclip --database postgresql://kanoclip@db/kanoclip --port 8001   a second instance

POST /v1/detect (multipart field "files", one or more; ?return_map=true adds the raw map), GET /v1/health (no key),
GET /v1/info, /v1/profiles, /v1/results, /metrics; the OpenAPI schema at /openapi.json. Every detection is recorded
(`kanoclip history`). Requests from other sites' pages and unknown Host names are refused.
"""

WATCH_EPILOG = """examples:
  kanoclip watch examples/parts/good --preset kanoclip-tiny --state st --profile demo --class-name screw
  kanoclip watch /srv/camera3 --profile bottle --ok-dir /srv/ok --ng-dir /srv/ng     a hot folder, sorted by label
  kanoclip watch /srv/camera3 --profile bottle --class-name bottle --reference good/   create the profile at start
  kanoclip watch rtsp://10.0.0.5/stream --profile bottle --fps 2 --webhook http://mes.local/hook --webhook-on defect
  kanoclip watch line3.mp4 /dev/video0 --profile bottle
  kanoclip watch /srv/camera3 --profile bottle --server http://127.0.0.1:8000   through a running `kanoclip serve`

every file and frame becomes a result in the station's history (`kanoclip history`); a file is scored once it is
complete, exactly once across restarts and across watchers on one database; a stream that drops is reopened with
backoff and the gap is recorded.
"""

HISTORY_EPILOG = """examples:
  kanoclip history st                                                   the newest 20 results of a --state folder
  kanoclip history /srv/kanoclip --profile bottle --since 2026-12-01 --label defect
  kanoclip history postgresql://kanoclip@db/kanoclip --csv > results.csv
"""

STATION = Section("station", StationConfig)
SINK_SECTION = Section("sinks", SinkConfig)
SERVE = Command(
    "serve",
    "an HTTP inspection service with a web page",
    serve_command,
    (Section("serve", ServeConfig), SINK_SECTION, STATION, run_section(skip=("image_threshold",)), MODEL),
    SERVE_EPILOG,
)
WATCH = Command(
    "watch",
    "score hot folders, videos and cameras into the station",
    watch_command,
    (
        Section("watch", WatchOptions),
        Section("watching", WatchConfig),
        SINK_SECTION,
        STATION,
        run_section(skip=()),
        MODEL,
    ),
    WATCH_EPILOG,
)


@dataclass(frozen=True, kw_only=True)
class BackupOptions:
    state: str = option(positional=True, metavar="DIR", help="the --state folder (the station may be running)")
    out: str = option(positional=True, metavar="OUT", help="a new folder: it opens as a station (--state OUT)")
    database: str | None = option(None, metavar="URL", help="its --database, when the rows live in PostgreSQL")


def backup_command(parsed: Parsed) -> int:
    from kanoclip.station.backup import backup

    o = parsed.get(BackupOptions)
    state = Path(o.state).expanduser()
    if not state.is_dir() or (o.database is None and not (state / "station.sqlite").is_file()):
        raise ConfigError(f"{state} is not a station's --state folder")
    report = backup(state, Path(o.out).expanduser(), o.database)
    print(f"backup -> {o.out}: the database and {report.files} file(s); {report.missing} file(s) pruned meanwhile")
    if report.restore:
        print(f"the rows are in its pg_dump file; to restore: {report.restore}")
    return 0


CHECK_EPILOG = """examples:
  kanoclip station check st                             rows against files: what is missing, what nothing names
  kanoclip station check /srv/kanoclip --fix            and remove the orphan files

exit status 0 when every row has its files and no orphan is left, 1 otherwise, 2 for a damaged or foreign database.
"""

BACKUP_EPILOG = """examples:
  kanoclip station backup st st-backup                  while it runs; then: kanoclip station check st-backup
  kanoclip station backup /srv/kanoclip /mnt/backup/kc --database postgresql://kanoclip@db/kanoclip

the database is copied as one snapshot (SQLite's online backup, or pg_dump for PostgreSQL, which needs PostgreSQL's
client programs), then every file it names.
"""

STATION_COMMANDS = Command(
    "station",
    "look after a station's state; adapt its models through a running server",
    subcommands=(
        Command(
            "check",
            "rows against stored files; --fix removes orphans",
            check_command,
            (Section("check", CheckOptions),),
            CHECK_EPILOG,
        ),
        Command(
            "backup",
            "copy a (running) station's state into a new folder",
            backup_command,
            (Section("backup", BackupOptions),),
            BACKUP_EPILOG,
        ),
        *API_COMMANDS,
    ),
    epilog=CHECK_EPILOG,
)
HISTORY = Command(
    "history", "what the station inspected", history_command, (Section("history", HistoryOptions),), HISTORY_EPILOG
)
