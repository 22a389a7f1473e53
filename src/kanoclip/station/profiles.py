"""Profiles (one per product or line), their model options and thresholds, and the detectors built from them.

The rule: a row is the truth, memory follows it. A change is written to the database first, and only over the
version this instance read (another instance's change in between is a `Conflict`, never overwritten); then the
profile in memory is replaced and its detector dropped (rebuilt on next use) or updated. Other instances notice a
change through the profile's `version` (`changed`). A change of model commits with the bank rebuilt for the new
model from the stored good parts, or not at all. A profile is its `uid`, not its name: one deleted and created again
is another. Profiles on the same model share one backend in memory; a backend that no detector uses any more is
dropped.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from kanoclip.errors import ConfigError
from kanoclip.inference.backends import REFERENCES, Backend
from kanoclip.inference.config import RunConfig
from kanoclip.inference.defect_typing import DefectExample
from kanoclip.inference.detector import Detector
from kanoclip.inference.thresholds import Thresholds
from kanoclip.model.references import ReferenceBank
from kanoclip.station import db
from kanoclip.station.db import check_profile_name
from kanoclip.station.errors import Conflict, NotFound
from kanoclip.station.store import BlobStore

DEFAULT_PROFILE = "default"
PROFILE_FIELDS = ("class_name", "checkpoint", "engine", "exported", "model_changes")
MODEL_FIELDS = ("checkpoint", "engine", "exported", "model_changes")  # what a profile's model is
VERSION_FIELDS = ("model_version", "rollback", "thresholds")  # set with a model by promote and rollback only
IN_STATE = "state:"  # a checkpoint inside the state folder (a model version): found wherever the state is opened


@dataclass
class Profile:
    name: str
    class_name: str | None = None
    checkpoint: str | None = None
    engine: str = "torch"
    exported: str | None = None
    model_changes: tuple[tuple[str, Any], ...] = ()
    bank_sha256: str | None = None
    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)
    model_version: int | None = None  # the model version in use; None: the model the profile was given
    rollback: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # what each promote replaced
    version: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0
    uid: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)  # this profile, not another of its name

    @classmethod
    def from_row(cls, row: Any) -> Profile:
        m = dict(row._mapping)
        m["model_changes"] = as_model_changes(m["model_changes"])
        fields = ("name", *PROFILE_FIELDS, "bank_sha256", "model_version", "version", "created_at", "updated_at", "uid")
        return cls(
            **{k: m[k] for k in fields},
            thresholds=Thresholds.from_calibration(m["thresholds"]),
            rollback=m["rollback"] or [],
        )

    def row(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields["thresholds"] = self.thresholds.to_dict()
        fields["model_changes"] = [list(pair) for pair in self.model_changes]
        return fields

    def model(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in MODEL_FIELDS}


def backend_key(run: RunConfig) -> RunConfig:
    """What a backend depends on: runs equal here share one model in memory."""
    return run.replace(class_name=None, references=(), calibration=None, image_threshold=None)


def update_profile(c: Connection, name: str, version: int, values: dict[str, Any]) -> None:
    """Write `values` over the profile's row only if it is still at `version`, the one this instance read."""
    done = c.execute(
        update(db.profiles).where(and_(db.profiles.c.name == name, db.profiles.c.version == version)).values(**values)
    )
    if done.rowcount != 1:
        raise Conflict(f"profile {name!r} was changed by another instance meanwhile: try again")


class Profiles:
    """The profiles of one station (`by_name`), their detectors and the backends those share.

    Everything that conditions or runs a shared model (`detector`, `put`, `changed`) runs on the caller's forward
    thread; database work runs anywhere.
    """

    def __init__(self, base: RunConfig, engine: Engine | None, store: BlobStore | None) -> None:
        self.base, self.engine, self.store = base, engine, store
        self.by_name: dict[str, Profile] = {}
        self.detectors: dict[str, Detector] = {}
        self.backends: dict[RunConfig, Backend] = {}
        if engine is not None:
            with engine.connect() as c:
                for row in c.execute(select(db.profiles)):
                    self.by_name[row.name] = Profile.from_row(row)

    def get(self, name: str) -> Profile:
        check_profile_name(name)
        if name not in self.by_name:
            raise NotFound(f"no profile {name!r}: GET /v1/profiles lists them; POST /v1/profiles creates one")
        return self.by_name[name]

    def run_of(self, p: Profile) -> RunConfig:
        checkpoint = p.checkpoint
        if checkpoint is not None and checkpoint.startswith(IN_STATE) and self.store is not None:
            checkpoint = str(self.store.root.parent / checkpoint.removeprefix(IN_STATE))
        return self.base.replace(
            class_name=p.class_name,
            checkpoint=checkpoint,
            model_file=None if checkpoint else self.base.model_file,  # a checkpoint keeps its own config
            engine=p.engine,
            exported=p.exported,
            model_changes=p.model_changes,
            references=(),
            calibration=None,
            image_threshold=None,
        )

    def detector(self, name: str) -> Detector:
        """The profile's detector, built on first use (forward thread): the shared backend, its text, its bank from
        the store and its thresholds."""
        p = self.get(name)
        if name not in self.detectors:
            self.detectors[name] = self._build(p)
        return self.detectors[name]

    def _build(self, p: Profile) -> Detector:
        run = self.run_of(p)
        key = backend_key(run)
        det = Detector.from_config(run, backend=self.backends.get(key))
        self.backends[key] = det.backend
        if p.thresholds.set:
            det.thresholds = p.thresholds
        if p.bank_sha256 is not None and self.store is not None and det.supports(REFERENCES):
            det.use_references(ReferenceBank.load(self.store.path(p.bank_sha256)))
        examples = self.defect_examples(p)
        if examples and det.typer is not None:  # typed verdicts' images, encoded by this model (its own features)
            det.use_defect_examples(det.encode_defect_examples(examples))
        return det

    def defect_examples(self, p: Profile) -> list[DefectExample]:
        """The images the profile's typed verdicts made examples of their types, oldest first."""
        if self.engine is None or self.store is None:
            return []
        e = db.defect_examples.c
        with self.engine.connect() as c:
            rows = list(c.execute(select(e.sha256, e.type).where(e.profile_uid == p.uid).order_by(e.added_at)))
        return [DefectExample(self.store.get(sha), kind) for sha, kind in rows if self.store.exists(sha)]

    def put(
        self,
        name: str,
        fields: dict[str, Any],
        create: bool | None,
        rebuild_bank: Callable[[str, Detector], str | None],
    ) -> Profile:
        """Create (`create` True), update (False) or either (None) a profile with these fields; a change of model or
        text drops the in-memory detector. A change of model builds the new detector first and has `rebuild_bank`
        encode the stored good parts with it (the bank file's sha256, None without parts), so the row commits with
        its new bank or, on any failure, nothing changes. Database first."""
        check_profile_name(name)
        unknown = sorted(set(fields) - set(PROFILE_FIELDS) - set(VERSION_FIELDS))
        if unknown:
            raise ConfigError(f"unknown profile field(s) {unknown}; a profile has {', '.join(PROFILE_FIELDS)}")
        exists = name in self.by_name
        if create is True and exists:
            raise Conflict(f"profile {name!r} exists: PATCH /v1/profiles/{name} changes it")
        if create is False and not exists:
            self.get(name)
        now = time.time()
        old = self.by_name.get(name) or Profile(name, created_at=now, version=0)
        new = dataclasses.replace(old, **fields, updated_at=now, version=old.version + 1)
        if new.model() != old.model() and "model_version" not in fields:
            new = dataclasses.replace(new, model_version=None)  # a model given by hand is no version of the profile
        self.run_of(new)  # an impossible combination (a checkpoint with an exported engine...) is refused here
        if exists and new == dataclasses.replace(old, updated_at=now, version=old.version + 1):
            return old  # nothing changed: no new version for other instances to reload
        rebuilt = None
        try:
            if exists and new.model() != old.model():
                rebuilt = self._build(dataclasses.replace(new, bank_sha256=None))
                new = dataclasses.replace(new, bank_sha256=rebuild_bank(name, rebuilt))
            self._write(new, exists, old.version)
        except BaseException:
            self.drop_unused_backends()  # a backend built for the new model only: gone with it
            raise
        self.by_name[name] = new
        self.detectors.pop(name, None)
        if rebuilt is not None:
            self.detectors[name] = rebuilt
        self.drop_unused_backends()
        return new

    def _write(self, p: Profile, exists: bool, previous_version: int) -> None:
        if self.engine is None:
            return
        with self.engine.begin() as c:
            if exists:
                update_profile(c, p.name, previous_version, p.row())
                return
            try:
                c.execute(insert(db.profiles).values(**p.row()))
            except IntegrityError:
                raise Conflict(f"profile {p.name!r} was just created by another instance: reload") from None

    def delete(self, name: str) -> None:
        """The profile and its good parts; its history stays."""
        self.get(name)
        if self.engine is not None:
            with self.engine.begin() as c:
                c.execute(delete(db.references).where(db.references.c.profile == name))
                c.execute(delete(db.defect_examples).where(db.defect_examples.c.profile_uid == self.by_name[name].uid))
                c.execute(delete(db.profiles).where(db.profiles.c.name == name))
        del self.by_name[name]
        self.detectors.pop(name, None)
        self.drop_unused_backends()

    def drop_unused_backends(self) -> None:
        used = {id(d.backend) for d in self.detectors.values()}
        for key in [k for k, b in self.backends.items() if id(b) not in used]:
            del self.backends[key]

    def set_thresholds(self, name: str, thresholds: Thresholds) -> None:
        p = self.get(name)
        new = dataclasses.replace(p, thresholds=thresholds, version=p.version + 1, updated_at=time.time())
        if self.engine is not None:
            with self.engine.begin() as c:
                values = {"thresholds": thresholds.to_dict(), "version": new.version, "updated_at": new.updated_at}
                update_profile(c, name, p.version, values)
        self.by_name[name] = new
        if name in self.detectors:
            self.detectors[name].thresholds = thresholds

    def describe(self, name: str, references: int) -> dict[str, Any]:
        """The profile as the API shows it, with its count of good parts (`references`)."""
        p = self.get(name)
        det = self.detectors.get(name)
        stale = det.stale_thresholds() if det is not None else None
        return {
            **{k: getattr(p, k) for k in ("name", *PROFILE_FIELDS, "model_version", "version")},
            "mode": "checkpoint" if p.checkpoint else ("exported" if p.exported else "training-free"),
            "thresholds": p.thresholds.to_dict(),
            "threshold_stale": stale,
            "references": references,
            "bank_sha256": p.bank_sha256,
            "created_at": p.created_at,
            "updated_at": p.updated_at,
        }

    def changed(self) -> list[str]:
        """Profiles another instance changed (or created, or deleted) since this one last looked: reloaded here from
        the database, their detectors dropped so the next use rebuilds them. Runs on the forward thread."""
        if self.engine is None:
            return []
        with self.engine.connect() as c:
            rows = {row.name: row for row in c.execute(select(db.profiles))}
        changed = []
        for name, row in rows.items():
            if name not in self.by_name or self.by_name[name].version != row.version:
                self.by_name[name] = Profile.from_row(row)
                self.detectors.pop(name, None)
                changed.append(name)
        for name in set(self.by_name) - set(rows):
            del self.by_name[name]
            self.detectors.pop(name, None)
            changed.append(name)
        if changed:
            self.drop_unused_backends()
        return changed


def as_model_changes(pairs: Any) -> tuple[tuple[str, Any], ...]:
    """Model changes read back from JSON ([[field, value], ...]) as a profile holds them."""
    return tuple((k, as_tuples(v)) for k, v in pairs)


def as_tuples(value: Any) -> Any:
    """JSON lists back into the tuples a config holds (tap layers...), so equal profiles compare equal."""
    return tuple(as_tuples(v) for v in value) if isinstance(value, list) else value
