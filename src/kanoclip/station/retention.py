"""Retention: the history pruned by age (`--keep-days`) and by the size of its files (`--max-store-gb`).

The rule: the oldest results go first, a step of rows per transaction (a long prune never holds the database), and a
file goes from the store only once no result, good part or bank names it any more.
"""

from __future__ import annotations

import time

from sqlalchemy import Engine, delete, func, select

from kanoclip.station import db
from kanoclip.station.store import BlobStore


class Retention:
    """Prunes one station's results table and store."""

    def __init__(self, engine: Engine | None, store: BlobStore | None) -> None:
        self.engine, self.store = engine, store

    def prune(self, keep_days: float | None, max_store_bytes: int | None, step: int = 500) -> int:
        """Drop the oldest results past `keep_days` or while the rows' files hold more than `max_store_bytes`, `step`
        rows per transaction, then their files that nothing else names. Returns how many rows went."""
        if self.engine is None or self.store is None:
            return 0
        r, removed = db.results.c, 0
        cutoff = None if keep_days is None else time.time() - keep_days * 86400
        while True:
            with self.engine.begin() as c:
                query = select(r.id, r.image_sha256, r.overlay_sha256, r.map_sha256, r.stored_bytes).order_by(r.id)
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
                    return removed
                c.execute(delete(db.results).where(r.id.in_([row.id for row in rows])))
                hashes = {h for row in rows for h in row[1:4] if h is not None}
            self._drop_unnamed(hashes)
            removed += len(rows)

    def _drop_unnamed(self, hashes: set[str]) -> None:
        """Files of deleted rows that no result, good part or bank names any more."""
        assert self.engine is not None and self.store is not None
        if not hashes:
            return
        r = db.results.c
        named: set[str] = set()
        with self.engine.connect() as c:
            for column in (r.image_sha256, r.overlay_sha256, r.map_sha256):
                named |= {h for (h,) in c.execute(select(column).where(column.in_(hashes)))}
            named |= {h for (h,) in c.execute(select(db.references.c.sha256).where(db.references.c.sha256.in_(hashes)))}
            named |= {
                h for (h,) in c.execute(select(db.profiles.c.bank_sha256).where(db.profiles.c.bank_sha256.in_(hashes)))
            }
        for h in hashes - named:
            self.store.delete(h)
