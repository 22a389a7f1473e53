"""Model versions of a profile: what each finished adapt job made, measured before it scores anything.

The rule: nothing changes a profile's model until a promote. A version is recorded with its folder already in place
(renamed in whole), its parent, the good parts it was made from, its settings and its shadow evaluation, in the
transaction that ends its job as done. Promote makes a version current and remembers what it replaced (model,
version and thresholds); rollback restores exactly that. The newest `keep` versions are kept, and any that is
current or that a rollback may return to; the rest go, rows first, then folders.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select

from kanoclip.inference.thresholds import Thresholds
from kanoclip.station import db
from kanoclip.station.errors import Conflict, NotFound
from kanoclip.station.jobs import JobFolders
from kanoclip.station.profiles import IN_STATE, Profile, as_model_changes

SUMMARY = ("version", "job_id", "checkpoint", "parent", "parts", "config", "numbers", "created_at")


def checkpoint_of(uid: str, job_id: str) -> str:
    """How a profile names a version's folder: inside the state, wherever it is opened."""
    return f"{IN_STATE}models/{uid}/{job_id}"


class Versions:
    """The model versions of one station's profiles."""

    def __init__(self, engine: Engine, folders: JobFolders) -> None:
        self.engine, self.folders = engine, folders

    def record(self, c: Connection, p: Profile, job_id: str, fields: dict[str, Any]) -> int:
        """A new version of `p` (its folder in place) in the caller's transaction; returns its number."""
        last = c.execute(
            select(func.max(db.model_versions.c.version)).where(db.model_versions.c.profile_uid == p.uid)
        ).scalar()
        number = int(last or 0) + 1
        c.execute(
            insert(db.model_versions).values(
                profile=p.name,
                profile_uid=p.uid,
                version=number,
                job_id=job_id,
                checkpoint=checkpoint_of(p.uid, job_id),
                created_at=time.time(),
                **fields,
            )
        )
        return number

    def all(self, p: Profile) -> list[dict[str, Any]]:
        """The profile's versions, newest first, without their per-row shadow scores."""
        columns = [db.model_versions.c[k] for k in SUMMARY]
        query = (
            select(*columns)
            .where(db.model_versions.c.profile_uid == p.uid)
            .order_by(db.model_versions.c.version.desc())
        )
        with self.engine.connect() as c:
            return [{**dict(r._mapping), "current": r.version == p.model_version} for r in c.execute(query)]

    def get(self, p: Profile, number: int) -> dict[str, Any]:
        with self.engine.connect() as c:
            row = c.execute(
                select(db.model_versions).where(
                    db.model_versions.c.profile_uid == p.uid, db.model_versions.c.version == number
                )
            ).first()
        if row is None:
            raise NotFound(f"profile {p.name!r} has no model version {number}: GET /v1/profiles/{p.name}/models")
        return {**dict(row._mapping), "current": number == p.model_version}

    def promoted(self, p: Profile, number: int, keep: int) -> dict[str, Any]:
        """The profile's fields once version `number` is current: its model and thresholds, with what it replaces
        remembered for rollback (the newest `keep` of those)."""
        if p.model_version == number:
            raise Conflict(f"model version {number} is profile {p.name!r}'s current model already")
        row = self.get(p, number)
        replaced = {"version": p.model_version, "model": json_model(p.model()), "thresholds": p.thresholds.to_dict()}
        return {
            "checkpoint": row["checkpoint"],
            "engine": "torch",
            "exported": None,
            "model_changes": as_model_changes(row["model_changes"]),
            "model_version": number,
            "rollback": [*p.rollback, replaced][-keep:],
            "thresholds": Thresholds.from_calibration(row["thresholds"]),
        }

    def rolled_back(self, p: Profile) -> dict[str, Any]:
        """The profile's fields once the last promote is undone: the model, version and thresholds it replaced."""
        if not p.rollback:
            raise Conflict(f"profile {p.name!r} has no promote to roll back")
        last = p.rollback[-1]
        model = last["model"]
        return {
            **{k: model[k] for k in ("checkpoint", "engine", "exported")},
            "model_changes": as_model_changes(model["model_changes"]),
            "model_version": last["version"],
            "rollback": p.rollback[:-1],
            "thresholds": Thresholds.from_calibration(last["thresholds"]),
        }

    def prune(self, p: Profile, keep: int) -> list[str]:
        """Versions past the newest `keep` removed, except any that a profile uses or a rollback returns to (this
        profile's or another's that took the same model): rows, then folders, reading the profiles in the transaction
        that deletes. Returns the job ids whose folders went."""
        v = db.model_versions.c
        with self.engine.begin() as c:
            named = in_use(c)
            rows = list(c.execute(select(v.version, v.job_id).where(v.profile_uid == p.uid).order_by(v.version.desc())))
            gone = [r for r in rows[keep:] if checkpoint_of(p.uid, r.job_id) not in named]
            if gone:
                numbers = [r.version for r in gone]
                c.execute(delete(db.model_versions).where(v.profile_uid == p.uid, v.version.in_(numbers)))
        for r in gone:
            shutil.rmtree(self.folders.model(p.uid, r.job_id), ignore_errors=True)
        return [r.job_id for r in gone]

    def forget(self, uids: Sequence[str]) -> None:
        """A deleted profile's versions: rows, then the folders no other profile uses or may roll back to."""
        v = db.model_versions.c
        with self.engine.begin() as c:
            rows = list(c.execute(select(v.profile_uid, v.job_id).where(v.profile_uid.in_(list(uids)))))
            c.execute(delete(db.model_versions).where(v.profile_uid.in_(list(uids))))
            named = in_use(c)
        for uid, job_id in rows:
            if checkpoint_of(uid, job_id) not in named:
                shutil.rmtree(self.folders.model(uid, job_id), ignore_errors=True)


def in_use(c: Connection) -> set[str]:
    """The checkpoints every profile uses or may roll back to (a profile may take another's model)."""
    named = set()
    for checkpoint, rollback in c.execute(select(db.profiles.c.checkpoint, db.profiles.c.rollback).with_for_update()):
        named |= {checkpoint, *(entry["model"]["checkpoint"] for entry in rollback or [])}
    return {n for n in named if n}


def json_model(model: dict[str, Any]) -> dict[str, Any]:
    """A profile's model fields as JSON keeps them."""
    return {**model, "model_changes": [list(pair) for pair in model["model_changes"]]}
