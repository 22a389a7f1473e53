"""Jobs: long work on a profile (adapt) that runs in a worker process beside the server, never on its forward path.

The rule: a job's row is the truth. It is `running` from its start until exactly one of three ends, each a
compare-and-set on that state: `done` (in the transaction that records the model version it made), `failed` or
`cancelled`. Its worker writes its phase and step, and a heartbeat, every second; a running job whose server is gone
(its process is dead on this host, or no heartbeat for `STALE_S` elsewhere) is failed by the next server that looks,
and what it left (its data, a model folder no version names) is removed: nothing half-written is ever used.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from kanoclip.station import db
from kanoclip.station.errors import Conflict, NotFound

STALE_S = 120.0  # no heartbeat for this long: its worker is gone (a worker beats every second)
LOG = "log.txt"  # the worker's output, in its job folder; kept after the job ends
WORK = ("goods", "run")  # what a job writes besides its log, removed once it has ended
TAIL_LINES = 30


@dataclass(frozen=True)
class JobFolders:
    """Where jobs and the models they make live in the state folder."""

    root: Path  # the state folder

    def job(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def model(self, uid: str, job_id: str) -> Path:
        return self.root / "models" / uid / job_id

    def staged_model(self, uid: str, job_id: str) -> Path:
        return self.root / "models" / uid / f".{job_id}.partial"


class Jobs:
    """The jobs of one station, in its database and state folder."""

    def __init__(self, engine: Engine, folders: JobFolders, instance: str) -> None:
        self.engine, self.folders, self.instance = engine, folders, instance

    def start(self, kind: str, profile: str, uid: str, settings: dict[str, Any]) -> str:
        """A new running job for the profile, owned by this instance; one running job per profile."""
        now = time.time()
        job_id = uuid.uuid4().hex
        busy = f"profile {profile!r} has a running job already (GET /v1/jobs?profile={profile}): cancel it or wait"
        try:
            with self.engine.begin() as c:
                c.execute(
                    insert(db.jobs).values(
                        id=job_id,
                        kind=kind,
                        profile=profile,
                        profile_uid=uid,
                        state="running",
                        settings=settings,
                        phase="starting",
                        step=0,
                        owner=self.instance,
                        heartbeat_at=now,
                        created_at=now,
                    )
                )
        except IntegrityError:  # the partial unique index: another running job of the profile
            raise Conflict(busy) from None
        return job_id

    def get(self, job_id: str) -> dict[str, Any]:
        with self.engine.connect() as c:
            row = c.execute(select(db.jobs).where(db.jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"no job {job_id!r}: GET /v1/jobs lists them")
        job = dict(row._mapping)
        job["log"] = self.tail(job_id)
        return job

    def state(self, job_id: str) -> str | None:
        with self.engine.connect() as c:
            return c.execute(select(db.jobs.c.state).where(db.jobs.c.id == job_id)).scalar()

    def all(self, profile: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = select(db.jobs).order_by(db.jobs.c.created_at.desc()).limit(limit)
        if profile is not None:
            query = query.where(db.jobs.c.profile == profile)
        with self.engine.connect() as c:
            return [dict(row._mapping) for row in c.execute(query)]

    def tail(self, job_id: str, lines: int = TAIL_LINES) -> list[str]:
        """The last lines of the worker's output (progress bars' redraws split into lines)."""
        try:
            with (self.folders.job(job_id) / LOG).open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        shown = [line.rstrip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
        return shown[-lines:]

    def beat(self, job_id: str, phase: str, step: int, steps: int | None) -> str:
        """The worker's progress and heartbeat; returns the job's state (anything but running: stop)."""
        with self.engine.begin() as c:
            c.execute(
                update(db.jobs)
                .where(db.jobs.c.id == job_id, db.jobs.c.state == "running")
                .values(phase=phase, step=step, steps=steps, heartbeat_at=time.time())
            )
            state = c.execute(select(db.jobs.c.state).where(db.jobs.c.id == job_id)).scalar()
        return str(state)

    def end(self, job_id: str, state: str, error: str | None = None, c: Any = None) -> bool:
        """Running -> `state` (failed or cancelled; done goes with its version, in the caller's transaction `c`);
        False when it had ended already."""
        values = {"state": state, "phase": state, "finished_at": time.time(), "error": error}
        statement = update(db.jobs).where(and_(db.jobs.c.id == job_id, db.jobs.c.state == "running")).values(**values)
        if c is not None:
            return bool(c.execute(statement).rowcount == 1)
        with self.engine.begin() as conn:
            ended = conn.execute(statement).rowcount == 1
        if ended:
            self.clean(job_id)
        return ended

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if not self.end(job_id, "cancelled", "cancelled by a request"):
            raise Conflict(f"job {job_id} has ended already ({self.get(job_id)['state']}): nothing to cancel")
        return {**job, "state": "cancelled"}

    def sweep(self) -> None:
        """Once at start: what ended jobs left (a kill between a job's end and its clean-up, a worker killed past
        its grace), removed."""
        folder = self.folders.root / "jobs"
        entries = list(folder.iterdir()) if folder.is_dir() else []
        for entry in entries:
            if any((entry / name).exists() for name in WORK):
                self.clean(entry.name)  # nothing for a running job's

    def cancel_profile(self, uid: str) -> None:
        """A deleted profile's running jobs, cancelled (each worker stops at its next heartbeat) and cleaned."""
        with self.engine.begin() as c:
            ended = list(
                c.execute(select(db.jobs.c.id).where(db.jobs.c.profile_uid == uid, db.jobs.c.state == "running"))
            )
            c.execute(
                update(db.jobs)
                .where(db.jobs.c.profile_uid == uid, db.jobs.c.state == "running")
                .values(state="cancelled", phase="cancelled", finished_at=time.time(), error="its profile was deleted")
            )
        for (job_id,) in ended:
            self.clean(job_id)

    def clean(self, job_id: str) -> None:
        """What an ended job leaves besides its log: its data and run, and a model folder no version names."""
        with self.engine.connect() as c:
            row = c.execute(select(db.jobs.c.profile_uid, db.jobs.c.state).where(db.jobs.c.id == job_id)).first()
            named = c.execute(select(db.model_versions.c.id).where(db.model_versions.c.job_id == job_id)).first()
        if row is None or row.state == "running":
            return
        for name in WORK:
            shutil.rmtree(self.folders.job(job_id) / name, ignore_errors=True)
        shutil.rmtree(self.folders.staged_model(row.profile_uid, job_id), ignore_errors=True)
        if named is None:
            shutil.rmtree(self.folders.model(row.profile_uid, job_id), ignore_errors=True)

    def fail_orphans(self) -> list[str]:
        """Running jobs whose server is gone, failed and cleaned: on this host, its process is dead; anywhere, no
        heartbeat for `STALE_S`. Returns their ids."""
        now, host = time.time(), socket.gethostname()
        with self.engine.connect() as c:
            running = list(
                c.execute(
                    select(db.jobs.c.id, db.jobs.c.owner, db.jobs.c.heartbeat_at).where(db.jobs.c.state == "running")
                )
            )
        failed = []
        for job_id, owner, heartbeat in running:
            owner_host, _, pid = owner.rpartition(":")
            gone = owner_host == host and owner != self.instance and not _alive(int(pid))
            if gone or now - heartbeat > STALE_S:
                why = "its server stopped during the job" if gone else f"no sign of its worker for {STALE_S:.0f} s"
                if self.end(job_id, "failed", why):
                    failed.append(job_id)
        return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that id
        return True
    return True
