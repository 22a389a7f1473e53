"""Retention: the history pruned by age (`--keep-days`) and by the size of its files (`--max-store-gb`).

The rule: the oldest results go first, a step of rows per transaction (a long prune never holds the database), and a
file goes from the store only once no result, good part or bank names it any more and nothing put it within the last
minute (a request in flight writes its files before its row commits). A bank file replaced by a newer one is retired:
it goes the same way, 5 s after its replacement (a reader of the old row has opened it by then). The claims a pruned
result completed go in its transaction (a claim never names a missing result); events older than the newest pruned
result go after, and so do claims never completed that are that old and a day past any claim's timeout.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from sqlalchemy import Column, Engine, Table, and_, delete, func, select

from kanoclip.station import db
from kanoclip.station.store import BlobStore

STALE_CLAIM_S = 86400.0  # a claim never completed this long is left by a watcher gone, whatever its timeout


class Retention:
    """Prunes one station's results table and store."""

    def __init__(self, engine: Engine | None, store: BlobStore | None) -> None:
        self.engine, self.store = engine, store
        self.deferred: set[str] = set()  # unnamed files too fresh to delete last time: looked at again next time

    def prune(self, keep_days: float | None, max_store_bytes: int | None, step: int = 500) -> int:
        """Drop the oldest results past `keep_days` or while the rows' files hold more than `max_store_bytes`, `step`
        rows per transaction, then their files that nothing else names. Returns how many rows went."""
        if self.engine is None or self.store is None:
            return 0
        r, removed, newest = db.results.c, 0, None
        cutoff = None if keep_days is None else time.time() - keep_days * 86400
        while True:
            with self.engine.begin() as c:
                query = select(r.id, r.image_sha256, r.overlay_sha256, r.map_sha256, r.stored_bytes, r.created_at)
                query = query.order_by(r.id)
                rows = [] if cutoff is None else list(c.execute(query.where(r.created_at < cutoff).limit(step)))
                if not rows and max_store_bytes is not None:
                    total = int(c.execute(select(func.coalesce(func.sum(r.stored_bytes), 0))).scalar() or 0)
                    excess, rows = total - max_store_bytes, []
                    if excess > 0:
                        for row in c.execute(query.limit(step)):
                            rows.append(row)
                            excess -= row.stored_bytes
                            if excess <= 0:
                                break
                if not rows:
                    self._drop_unnamed(set())  # what an earlier pass left for being fresh
                    self._prune_ledger(max(cutoff or 0.0, newest or 0.0) if (cutoff or newest) else None, step)
                    return removed
                c.execute(delete(db.results).where(r.id.in_([row.id for row in rows])))
                c.execute(delete(db.claims).where(db.claims.c.result_id.in_([row.id for row in rows])))
                hashes = {h for row in rows for h in row[1:4] if h is not None}
            self._drop_unnamed(hashes)
            removed += len(rows)
            newest = max(newest or 0.0, max(row.created_at for row in rows))

    def sweep_store(self, step: int = 500) -> None:
        """Once at start: the files nothing names that an earlier process left for a pass it never made (what it
        deferred died with it: a kill, a restart), and the temporary files of puts a crash stopped, each once past
        its grace. One walk of the store, `step` names per query."""
        if self.engine is None or self.store is None:
            return
        names = self.store.names()
        while chunk := set(itertools.islice(names, step)):
            self._drop_unnamed(chunk)
        for path in self.store.unfinished():
            self.store.delete_unfinished(path)

    def retire(self, sha256: str) -> None:
        """A bank file its profile no longer names (a newer bank replaced it): removed 5 s on, at the next `retire`
        or pass, once nothing names it, so the store holds one bank per profile, not one per change. The files
        retired before it, past their grace, go now."""
        if self.store is None:
            return
        self.store.retire(sha256)
        self._drop_unnamed({sha256})

    def _prune_ledger(self, horizon: float | None, step: int) -> None:
        """Events older than `horizon` (the pruned results' age), and claims never completed that are older than it
        and than `STALE_CLAIM_S`, `step` rows per transaction."""
        if horizon is None:
            return
        stale = min(horizon, time.time() - STALE_CLAIM_S)
        e_, c_ = db.events.c, db.claims.c
        self._delete_steps(db.events, e_.id, e_.created_at < horizon, step)
        self._delete_steps(db.claims, c_.key, and_(c_.result_id.is_(None), c_.claimed_at < stale), step)

    def _delete_steps(self, table: Table, key: Column[Any], where: Any, step: int) -> None:
        assert self.engine is not None
        while True:
            with self.engine.begin() as c:
                keys = [k for (k,) in c.execute(select(key).where(where).limit(step))]
                if keys:
                    c.execute(delete(table).where(key.in_(keys)))
            if len(keys) < step:
                return

    def _drop_unnamed(self, hashes: set[str]) -> None:
        """Files of deleted rows that nothing names any more (no result, good part, bank or defect example)."""
        assert self.engine is not None and self.store is not None
        hashes = hashes | self.deferred
        if not hashes:
            return
        named: set[str] = set()
        with self.engine.connect() as c:
            for column in db.FILE_COLUMNS:
                named |= {h for (h,) in c.execute(select(column).where(column.in_(hashes)))}
        # A file put again within the grace may be about to be named by a row in flight: kept, looked at next pass.
        self.deferred = {h for h in hashes - named if not self.store.delete_unneeded(h) and self.store.exists(h)}
