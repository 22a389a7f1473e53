"""What a station keeps and where (`StationConfig`), and what its server allows and promises (`ServeConfig`): keys,
hosts, request and process limits, batching, retention. Each flag of `serve` and `watch` is declared here."""

from __future__ import annotations

from dataclasses import dataclass, field

from kanoclip.errors import ConfigError
from kanoclip.options import option
from kanoclip.station.sinks.config import SinkConfig

MB = 1024 * 1024
GB = 1024 * MB
STATION = "the station (history, profiles, banks, thresholds)"


@dataclass(frozen=True)
class StationConfig:
    """Where the station's state lives and which profile the model flags create or change."""

    state: str | None = option(
        None,
        metavar="DIR",
        group=STATION,
        help="the state folder: its SQLite database and the stored images, maps and banks (default: the user's data "
        "folder, e.g. ~/.local/share/kanoclip/station)",
    )
    database: str | None = option(
        None,
        metavar="URL",
        group=STATION,
        help="keep profiles and history in this database instead (postgresql://user@host/db, for several instances "
        "sharing one --state folder); pip install 'kanoclip[postgres]'",
    )
    profile: str = option(
        "default",
        metavar="NAME",
        group=STATION,
        help="the profile the model flags create or change, and that /v1/detect uses",
    )
    no_state: bool = option(
        False, group=STATION, help="keep nothing: no history, and what the server is taught is lost at exit"
    )


@dataclass
class ServeConfig:
    """The server's limits and promises; every limit holds per request and per process."""

    host: str = option("127.0.0.1", help="bind address (127.0.0.1: this machine only)")
    port: int = option(8000, help="TCP port")
    api_key: str | None = option(
        None, secret=True, help="the key itself: visible to every user in `ps`; prefer --api-key-file"
    )
    api_key_file: str | None = option(
        None,
        metavar="FILE",
        help="require the key in FILE on every API call (or env KANOCLIP_API_KEY); keeps it out of `ps`",
    )
    allowed_hosts: tuple[str, ...] = option(
        (),
        name="--allowed-host",
        metavar="NAME",
        help="a Host name the server answers besides loopback and --host (behind a proxy, its public name)",
    )
    max_request_bytes: int = option(
        64 * MB, name="--max-request-mb", scale=MB, help="a whole request, counted as it arrives (413 above)"
    )
    max_request_pixels: int = 64_000_000  # all images of one request together, checked before decoding
    max_inflight_pixels: int = 256_000_000  # decoded and not yet answered, over all requests of the process
    pixel_wait_s: float = 30.0  # how long a request waits for the process's pixel budget before 503
    body_timeout_s: float = 60.0  # for a request's whole body
    max_reference_images: int = 1_000  # good parts in the bank
    max_reference_bytes: int = GB  # the bank's features, after the coreset
    max_batch: int = option(8, help="images of concurrent requests run together")
    max_wait_ms: float = option(10.0, help="how long a batch waits for more images")
    max_upload_bytes: int = option(20 * MB, name="--max-upload-mb", scale=MB, help="per file (413 above)")
    max_files: int = 64
    poll_s: float = 1.0  # how often profile changes made through other instances are looked for
    max_profiles: int = option(
        64, group=STATION, help="profiles the station holds at most: creating one more over HTTP is a 409"
    )
    keep_days: float | None = option(
        None, group=STATION, help="prune results older than this many days (default: keep all)"
    )
    max_store_bytes: int | None = option(
        None,
        name="--max-store-gb",
        scale=GB,
        group=STATION,
        help="prune the oldest results while their stored files hold more than this many GB",
    )
    prune_every_s: float = 600.0
    keep_versions: int = option(
        5, group=STATION, help="model versions kept per profile (besides the current one and those rollback needs)"
    )
    max_jobs: int = option(1, help="adapt jobs this server runs at a time, each in its own process")

    sinks: SinkConfig = field(default_factory=SinkConfig)  # set from the command's sinks section

    def __post_init__(self) -> None:
        """Refuse limits that cannot hold: a negative --max-store-gb once pruned every result without a word."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0..65535, got {self.port}")
        for flag, value in (
            ("--max-request-mb", self.max_request_bytes),
            ("--max-upload-mb", self.max_upload_bytes),
            ("--max-batch", self.max_batch),
            ("--max-profiles", self.max_profiles),
            ("--keep-days", self.keep_days),
            ("--max-store-gb", self.max_store_bytes),
            ("--keep-versions", self.keep_versions),
            ("--max-jobs", self.max_jobs),
        ):
            if value is not None and not value > 0:
                raise ConfigError(f"{flag} must be > 0, got {value}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
