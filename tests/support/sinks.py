"""Checks shared by the tiers that run them on SQLite (integration) and on PostgreSQL (system)."""

from __future__ import annotations

import subprocess
import time

from sqlalchemy import Engine, insert, select

from kanoclip.station import db
from kanoclip.station.sinks.outbox import TableOutbox, this_host

KEY = "mqtt://127.0.0.1:1883/line"


def _row(engine: Engine, instance: str, sink: str = KEY) -> int:
    with engine.begin() as c:
        row = {"sink": sink, "topic": "line/p", "payload": "{}", "instance": instance, "created_at": time.time()}
        return int(c.execute(insert(db.sink_outbox).values(**row).returning(db.sink_outbox.c.id)).scalar_one())


def outbox_rules(engine: Engine) -> None:
    """Rows come back in order; a sink starting takes over only the rows of its destination left by a sink that is
    closed (in this process) or whose process on this host has ended: never a live sink's, another host's or another
    destination's."""
    live = TableOutbox(engine, KEY)
    mine = live.add([("line/a", '{"n": 1}'), ("line/b", '{"n": 2}')])
    assert [(q.topic, q.payload) for q in mine] == [("line/a", '{"n": 1}'), ("line/b", '{"n": 2}')]
    assert mine[0].id < mine[1].id
    ended = subprocess.Popen(["true"])
    ended.wait(timeout=30)
    orphan = _row(engine, f"{this_host()}:{ended.pid}:0123456789ab")  # its process has ended
    _row(engine, "another-host:1:0123456789ab")  # its host's next start takes it
    _row(engine, f"{this_host()}:{ended.pid}:0123456789ab", sink="mqtt://elsewhere:1883/line")  # another destination

    starting = TableOutbox(engine, KEY)
    assert [q.id for q in starting.adopt()] == [orphan]  # not the live sink's rows
    live.close()
    after = TableOutbox(engine, KEY)
    assert [q.id for q in after.adopt()] == [q.id for q in mine]  # the closed sink's, in order
    assert [q.id for q in starting.adopt()] == [orphan]  # still its own, not taken twice
    after.remove([q.id for q in mine])
    with engine.connect() as c:
        left = set(c.execute(select(db.sink_outbox.c.id)).scalars())
    assert left.isdisjoint(q.id for q in mine) and orphan in left and len(left) == 3
    starting.close()
    after.close()
