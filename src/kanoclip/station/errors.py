"""The station's refusals, as the API answers them: an unknown name is 404, a request that cannot apply is 409."""

from __future__ import annotations

from sqlalchemy import Engine

from kanoclip.errors import KanoclipError


class NotFound(KanoclipError):
    """An unknown profile or result (404)."""


class Conflict(KanoclipError):
    """A request that cannot apply to the profile as it is (409)."""


def history_engine(engine: Engine | None) -> Engine:
    """The database of a station that keeps one: asking a `--no-state` server for its history is a 409, not a
    crash."""
    if engine is None:
        raise Conflict("this server keeps no history (started with --no-state)")
    return engine
