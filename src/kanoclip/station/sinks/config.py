"""The sinks' flags, shared by `watch` and `serve` (declared here once)."""

from __future__ import annotations

from dataclasses import dataclass

from kanoclip.options import option

SINKS = "sinks"


@dataclass(frozen=True)
class SinkConfig:
    """Where each result goes besides the history."""

    webhook: str | None = option(
        None, metavar="URL", group=SINKS, help="POST each result as JSON here (retried; never blocks scoring)"
    )
    webhook_on: str = option(
        "all", choices=("all", "defect", "ng"), group=SINKS, help="every result, or defects only (ng: the old name)"
    )

    @property
    def any(self) -> bool:
        return self.webhook is not None
