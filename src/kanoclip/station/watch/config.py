"""How `watch` takes files and frames in and hands results on (its flags are declared here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kanoclip.errors import ConfigError
from kanoclip.options import option
from kanoclip.station.sinks.config import SINKS, SinkConfig

FOLDERS, VIDEO = "folders", "video and cameras"


@dataclass
class WatchConfig:
    """How a watcher takes files and frames in, decides they are complete, and hands results on."""

    profile: str = "default"  # set from the station's --profile
    existing: str = option("score", choices=("score", "skip"), group=FOLDERS, help="files already there at start")
    settle_s: float = option(1.0, group=FOLDERS, help="a file is complete once its size and mtime held this long")
    max_wait_s: float = option(300.0, group=FOLDERS, help="record a file still changing after this many seconds")
    corrupt_after_s: float = option(
        30.0,
        name="--corrupt-after",
        metavar="SECONDS",
        group=FOLDERS,
        help="a file that does not decode is tried again until unchanged this long, then recorded as corrupt",
    )
    claim_timeout_s: float = option(
        300.0, group=FOLDERS, help="retry a file whose watcher died this long ago (its claim is taken over)"
    )
    poll: bool = option(False, group=FOLDERS, help="poll instead of OS events (network filesystems)")
    ok_dir: Path | None = option(None, metavar="DIR", group=FOLDERS, help="move each good file here")
    ng_dir: Path | None = option(None, metavar="DIR", group=FOLDERS, help="move each defective file here")
    copy: bool = option(False, group=FOLDERS, help="copy into --ok-dir/--ng-dir instead of moving")
    fps: float | None = option(1.0, group=VIDEO, help="frames scored per second of video and streams (0: every frame)")
    batch: int = 8  # set from the run's --batch-size
    sinks: SinkConfig = field(default_factory=SinkConfig)  # set from the command's sinks section
    progress: bool = option(
        True,
        name="--quiet",
        negate=True,
        group=SINKS,
        help="no progress (a live line on a terminal, else one every 30 s)",
    )
    summary_s: float = 30.0  # without a terminal, a progress line this often

    def __post_init__(self) -> None:
        for flag, value in (
            ("--settle-s", self.settle_s),
            ("--max-wait-s", self.max_wait_s),
            ("--corrupt-after", self.corrupt_after_s),
        ):
            if not value > 0:
                raise ConfigError(f"{flag} must be > 0, got {value}")
        if not self.claim_timeout_s > 0 or (self.fps is not None and self.fps < 0):
            raise ConfigError("--claim-timeout-s must be > 0 and --fps >= 0")
