"""Exactly-once scoring for `watch`: claims on files, and the events the history shows beside results.

The rule: a file (its key) is recorded once across restarts and watchers, by compare-and-set on its holder. A claim
is held by a holder id unique per process (`new_holder`: one per watcher's scorer, sent by `watch --server` to the
server). A new key is claimed by inserting it; a claim whose result is recorded is done for good; a claim another
holder took less than the timeout ago is busy; an older one (or the holder's own) is taken over only if it is still
as read (same `claimed_at`, no result), so two watchers never both take it. The claim is completed by
`Results.record`, in the transaction of its result and only where this holder still holds it (`complete`): a holder
whose claim was taken over records nothing. A holder that stops releases what it holds (`release`), so the next
start takes those files at once instead of after the timeout.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from sqlalchemy import Connection, Engine, Row, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from kanoclip.station import db
from kanoclip.station.errors import history_engine

Claimed = Literal["mine", "done", "busy"]
HOLDER_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"  # a holder id as the API takes it (fits claims.claimed_by)


def new_holder() -> str:
    """A holder id unique per process and scorer: two watchers never share one, even through one server."""
    return uuid.uuid4().hex


def complete(c: Connection, key: str, holder: str | None, result_id: int) -> bool:
    """In the transaction recording `result_id`: mark the claim on `key` done, only where `holder` still holds it
    unfinished (compare-and-set). False: the claim was taken over or released, and the caller must record nothing."""
    c_ = db.claims.c
    done = c.execute(
        update(db.claims)
        .where(and_(c_.key == key, c_.claimed_by == holder, c_.result_id.is_(None)))
        .values(result_id=result_id)
    )
    return holder is not None and done.rowcount == 1


class Claims:
    """The claims and events tables of a station; events are written as `instance`, claims by their holder."""

    def __init__(self, engine: Engine | None, instance: str) -> None:
        self.engine, self.instance = engine, instance

    def claim(self, name: str, key: str, source: str, timeout_s: float, holder: str) -> Claimed:
        """Take a file for scoring as `holder`: "mine" (score it, then `record` with this key and holder), "done"
        (its result is recorded), or "busy" (another holder took it less than `timeout_s` ago; a claim older than
        that, never finished, is taken over)."""
        engine, now = history_engine(self.engine), time.time()
        c_ = db.claims.c
        with engine.begin() as c:
            row = c.execute(select(db.claims).where(c_.key == key)).first()
            if row is None:
                try:
                    with c.begin_nested():
                        c.execute(
                            insert(db.claims).values(
                                key=key, profile=name, source=source, claimed_by=holder, claimed_at=now
                            )
                        )
                    return "mine"
                except IntegrityError:  # another watcher inserted it between our look and our insert
                    row = c.execute(select(db.claims).where(c_.key == key)).first()
            assert row is not None
            if row.result_id is not None:
                return "done"
            if now - row.claimed_at < timeout_s and row.claimed_by != holder:
                return "busy"
            taken = c.execute(
                update(db.claims)
                .where(and_(c_.key == key, c_.claimed_at == row.claimed_at, c_.result_id.is_(None)))
                .values(claimed_by=holder, claimed_at=now)
            )
            return "mine" if taken.rowcount == 1 else "busy"

    def release(self, holder: str) -> int:
        """Give up every claim `holder` holds unfinished (a watcher stopping): the next claim on those files is a
        new one, not a wait for the timeout. Returns how many were released."""
        if self.engine is None:
            return 0
        c_ = db.claims.c
        with self.engine.begin() as c:
            released = c.execute(delete(db.claims).where(and_(c_.claimed_by == holder, c_.result_id.is_(None))))
            return int(released.rowcount)

    def claimed_label(self, key: str) -> int | None:
        """The label recorded for a finished claim (None: unlabelled, failed, or not finished)."""
        row = self._claimed(db.results.c.label, key)
        return None if row is None else row.label

    def claimed_result(self, key: str) -> dict[str, Any] | None:
        """The result row recorded for a finished claim (None: not finished)."""
        row = self._claimed(db.results, key)
        return None if row is None else dict(row._mapping)

    def _claimed(self, what: Any, key: str) -> Row[Any] | None:
        """`what` (columns of the results table) of the result that completed the claim on `key`."""
        with history_engine(self.engine).connect() as c:
            return c.execute(
                select(what).join(db.claims, db.claims.c.result_id == db.results.c.id).where(db.claims.c.key == key)
            ).first()

    def event(self, name: str | None, source: str, kind: str, detail: str) -> None:
        """Something the history should show that is not a result: a stream gap, an undelivered webhook."""
        if self.engine is None:
            return
        with self.engine.begin() as c:
            c.execute(
                insert(db.events).values(
                    created_at=time.time(),
                    profile=name,
                    source=source,
                    kind=kind,
                    detail=detail,
                    instance=self.instance,
                )
            )

    def events(self, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest events first, of one profile or all."""
        query = select(db.events).order_by(db.events.c.id.desc()).limit(limit)
        if name is not None:
            query = query.where(db.events.c.profile == name)
        with history_engine(self.engine).connect() as c:
            return [dict(row._mapping) for row in c.execute(query)]
