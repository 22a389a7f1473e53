"""Where a sink keeps the messages its destination has not yet acknowledged: in the station's database (table
`sink_outbox`), so results made while a broker is down, or before a restart, are delivered later; or, without a
state, in memory only.

Rows belong to the sink that queued them (`instance`: host, pid and the sink's own token). A sink starting takes over
the rows of its destination left by a process of this host that is gone, or by a sink of this process closed since;
a live sink's rows stay its own, so two processes on one database never publish each other's messages (rows left on
another host wait for a sink started there).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine, delete, insert, select, update

from kanoclip.station import db

# The tokens of the sinks open in this process: rows of this pid under another token are a closed sink's leftovers
_OPEN: set[str] = set()
_OPEN_LOCK = threading.Lock()


@dataclass
class Queued:
    """A message waiting for its destination: its row (negative: kept in memory only), topic and payload."""

    id: int
    topic: str
    payload: str


class Outbox(Protocol):
    durable: bool

    def add(self, entries: list[tuple[str, str]]) -> list[Queued]: ...
    def remove(self, ids: Iterable[int]) -> None: ...
    def adopt(self) -> list[Queued]: ...
    def close(self) -> None: ...


class MemoryOutbox:
    """No state (`serve --no-state`, `watch --server`): kept only as long as the process lives."""

    durable = False

    def __init__(self) -> None:
        self._next = 0

    def add(self, entries: list[tuple[str, str]]) -> list[Queued]:
        out = []
        for topic, payload in entries:
            self._next -= 1
            out.append(Queued(self._next, topic, payload))
        return out

    def remove(self, ids: Iterable[int]) -> None:
        pass

    def adopt(self) -> list[Queued]:
        return []

    def close(self) -> None:
        pass


def this_host() -> str:
    return socket.gethostname()[:40]


def _gone(instance: str) -> bool:
    """Whether the sink that queued rows under `instance` (host:pid:token) is closed: its process ended, or it was
    closed in this one. Only known on this host."""
    parts = instance.split(":")
    if len(parts) != 3 or parts[0] != this_host() or not parts[1].isdigit():
        return False
    _, pid, token = parts
    if int(pid) == os.getpid():
        with _OPEN_LOCK:
            return token not in _OPEN
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # another user's live process
    return False


class TableOutbox:
    """In the station's database, one row per message, deleted when the destination acknowledges it."""

    durable = True

    def __init__(self, engine: Engine, sink: str) -> None:
        token = uuid.uuid4().hex[:12]
        with _OPEN_LOCK:
            _OPEN.add(token)
        self.engine, self.sink, self.token = engine, sink, token
        self.instance = f"{this_host()}:{os.getpid()}:{token}"

    def add(self, entries: list[tuple[str, str]]) -> list[Queued]:
        now = time.time()
        rows = [
            {"sink": self.sink, "topic": t, "payload": p, "instance": self.instance, "created_at": now}
            for t, p in entries
        ]
        if not rows:
            return []
        with self.engine.begin() as c:
            kept = insert(db.sink_outbox).returning(db.sink_outbox.c.id, sort_by_parameter_order=True)
            ids = c.execute(kept, rows).scalars().all()
        return [Queued(int(i), t, p) for i, (t, p) in zip(ids, entries, strict=True)]

    def remove(self, ids: Iterable[int]) -> None:
        rows = [i for i in ids if i > 0]
        if rows:
            with self.engine.begin() as c:
                c.execute(delete(db.sink_outbox).where(db.sink_outbox.c.id.in_(rows)))

    def adopt(self) -> list[Queued]:
        """This destination's rows left by processes gone, now this one's, oldest first."""
        o = db.sink_outbox.c
        with self.engine.begin() as c:
            holders = c.execute(select(o.instance).where(o.sink == self.sink).distinct()).scalars().all()
            gone = [h for h in holders if _gone(h)]
            if gone:  # one statement: of two processes starting together, one takes them
                c.execute(
                    update(db.sink_outbox)
                    .where(o.sink == self.sink, o.instance.in_(gone))
                    .values(instance=self.instance)
                )
            rows = c.execute(
                select(o.id, o.topic, o.payload).where(o.sink == self.sink, o.instance == self.instance).order_by(o.id)
            ).all()
        return [Queued(int(r.id), r.topic, r.payload) for r in rows]

    def close(self) -> None:
        with _OPEN_LOCK:
            _OPEN.discard(self.token)
