"""The inspection station: profiles (one per product or line), their banks and thresholds, and every result, kept
in the station's database (`database`) and content-addressed store (`store`), so that what a server is taught and
what it inspected survive restarts and are shared by several servers.

One process serves many profiles. Profiles on the same model (backbone, checkpoint, engine, device, precision)
share one backend in memory; each has its own Detector (text features, bank, thresholds). Everything that conditions
or runs a shared model runs on the caller's forward thread (serve's `MicroBatcher.exclusive`); database work runs
anywhere. A change is committed first, then applied: a row is the truth, memory follows it. Other instances see a
change through the profile's `version`, polled by `changed_profiles`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from sqlalchemy import Engine, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from kanoclip._files import npy_bytes
from kanoclip.data.images import to_png
from kanoclip.data.inputs import expand_inputs
from kanoclip.errors import ConfigError, KanoclipError
from kanoclip.evaluation.calibration import f1_max_threshold, false_alarm_threshold
from kanoclip.inference.backends import REFERENCES, Backend
from kanoclip.inference.config import RunConfig
from kanoclip.inference.detector import Detector, Prediction
from kanoclip.inference.thresholds import Thresholds, read_standalone
from kanoclip.model.references import ReferenceBank
from kanoclip.station import db
from kanoclip.station.db import check_profile_name
from kanoclip.station.store import BlobStore, DiskFull

DEFAULT_PROFILE = "default"
PROFILE_FIELDS = ("class_name", "checkpoint", "engine", "exported", "model_changes")
MODEL_FIELDS = ("checkpoint", "engine", "exported", "model_changes")  # what a profile's model is


class NotFound(KanoclipError):
    """An unknown profile or result (404)."""


class Conflict(KanoclipError):
    """A request that cannot apply to the profile as it is (409)."""


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
    version: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0

    @classmethod
    def from_row(cls, row: Any) -> Profile:
        m = dict(row._mapping)
        m["model_changes"] = tuple((k, _tuples(v)) for k, v in m["model_changes"])
        return cls(
            **{k: m[k] for k in ("name", *PROFILE_FIELDS, "bank_sha256", "version", "created_at", "updated_at")},
            thresholds=Thresholds.from_calibration(m["thresholds"]),
        )

    def row(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields["thresholds"] = self.thresholds.to_dict()
        fields["model_changes"] = [list(pair) for pair in self.model_changes]
        return fields

    def model(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in MODEL_FIELDS}


@dataclass
class Detection:
    """One image of a request: its bytes, decoded pixels and prediction, and what the station recorded."""

    source: str
    data: bytes
    rgb: NDArray[np.uint8]
    prediction: Prediction
    overlay_png: bytes | None = None
    result_id: int | None = None
    key: str | None = None  # the claim this detection completes (`Station.claim`)
    frame_index: int | None = None
    frame_time: float | None = None


def artifacts(rgb: NDArray[np.uint8], p: Prediction, det: Detector) -> tuple[bytes, bytes] | None:
    """The overlay PNG (at the image's size, on the detector's colour scale, as the answer showed it) and the float16
    map (.npy) at most at the run resolution, where the model computed it: a larger map is only its bilinear
    upsampling, so the history keeps the smaller one."""
    if p.anomaly_map is None:
        return None
    png, size = to_png(det.paint(rgb, p)), det.image_size
    amap = torch.from_numpy(p.anomaly_map)
    if max(amap.shape) > size:
        amap = F.interpolate(amap[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return png, npy_bytes(amap.numpy().astype(np.float16))


def backend_key(run: RunConfig) -> RunConfig:
    """What a backend depends on: runs equal here share one model in memory."""
    return run.replace(class_name=None, references=(), calibration=None, image_threshold=None)


class Station:
    """Profiles, their detectors and the history, over one database and one state folder.

    Args:
        base: the run options of the process (device, precision, model flags); a profile sets class, checkpoint,
            engine and exported folder on top.
        engine: the database (None: nothing is kept, as `serve --no-state`).
        folder: the state folder holding the store (None with engine None).
    """

    def __init__(self, base: RunConfig, engine: Engine | None, folder: Path | None) -> None:
        self.base, self.engine = base, engine
        self.store = BlobStore(folder) if folder is not None else None
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.profiles: dict[str, Profile] = {}
        self.detectors: dict[str, Detector] = {}
        self.backends: dict[RunConfig, Backend] = {}
        if engine is not None:
            with engine.connect() as c:
                for row in c.execute(select(db.profiles)):
                    self.profiles[row.name] = Profile.from_row(row)

    @classmethod
    def around(cls, detector: Detector, name: str = DEFAULT_PROFILE) -> Station:
        """A station that keeps nothing, with this detector as its one profile (the Python API's serve)."""
        run = detector.run_config
        station = cls(run, None, None)
        station.profiles[name] = Profile(
            name,
            run.class_name,
            run.checkpoint,
            run.engine,
            run.exported,
            run.model_changes,
            thresholds=detector.thresholds,
        )
        station.detectors[name] = detector
        station.backends[backend_key(run)] = detector.backend
        return station

    @classmethod
    def open(cls, base: RunConfig, state: Path | None, url: str | None = None) -> Station:
        """The station in `state` (its SQLite database, or the one at `url`), migrated to this version's schema."""
        if state is None:
            return cls(base, None, None)
        if url is not None:
            engine = db.connect(url)  # an unreachable or newer database is refused before the folder is made
            state.mkdir(parents=True, exist_ok=True)
            return cls(base, engine, state)
        state.mkdir(parents=True, exist_ok=True)
        return cls(base, db.connect(db.database_url(state)), state)

    @property
    def keeps(self) -> bool:
        return self.engine is not None

    # -- profiles --------------------------------------------------------------------------------------------------
    def profile(self, name: str) -> Profile:
        check_profile_name(name)
        if name not in self.profiles:
            raise NotFound(f"no profile {name!r}: GET /v1/profiles lists them; POST /v1/profiles creates one")
        return self.profiles[name]

    def run_of(self, p: Profile) -> RunConfig:
        return self.base.replace(
            class_name=p.class_name,
            checkpoint=p.checkpoint,
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
        p = self.profile(name)
        if name not in self.detectors:
            run = self.run_of(p)
            key = backend_key(run)
            det = Detector.from_config(run, backend=self.backends.get(key))
            self.backends[key] = det.backend
            if p.thresholds.set:
                det.thresholds = p.thresholds
            if p.bank_sha256 is not None and self.store is not None and det.supports(REFERENCES):
                det.use_references(ReferenceBank.load(self.store.path(p.bank_sha256)))
            self.detectors[name] = det
        return self.detectors[name]

    def put_profile(self, name: str, fields: dict[str, Any], create: bool | None = None) -> Profile:
        """Create (`create` True), update (False) or either (None) a profile with these fields; a change of model or
        text drops the in-memory detector, rebuilt (and its bank re-encoded) on next use. Database first."""
        check_profile_name(name)
        unknown = sorted(set(fields) - set(PROFILE_FIELDS))
        if unknown:
            raise ConfigError(f"unknown profile field(s) {unknown}; a profile has {', '.join(PROFILE_FIELDS)}")
        exists = name in self.profiles
        if create is True and exists:
            raise Conflict(f"profile {name!r} exists: PATCH /v1/profiles/{name} changes it")
        if create is False and not exists:
            self.profile(name)
        now = time.time()
        old = self.profiles.get(name) or Profile(name, created_at=now, version=0)
        new = dataclasses.replace(old, **fields, updated_at=now, version=old.version + 1)
        self.run_of(new)  # an impossible combination (a checkpoint with an exported engine...) is refused here
        if exists and new == dataclasses.replace(old, updated_at=now, version=old.version + 1):
            return old  # nothing changed: no new version for other instances to reload
        model_changed = new.model() != old.model()
        if model_changed:
            new = dataclasses.replace(new, bank_sha256=None)
        self._write_profile(new, exists, old.version)
        self.profiles[name] = new
        old_detector = self.detectors.pop(name, None)
        if model_changed and old_detector is not None and old_detector.references is not None:
            self.rebuild_bank(name)
        self._drop_unused_backends()
        return new

    def _write_profile(self, p: Profile, exists: bool, previous_version: int) -> None:
        if self.engine is None:
            return
        with self.engine.begin() as c:
            if not exists:
                try:
                    c.execute(insert(db.profiles).values(**p.row()))
                except IntegrityError:
                    raise Conflict(f"profile {p.name!r} was just created by another instance: reload") from None
                return
            done = c.execute(
                update(db.profiles)
                .where(and_(db.profiles.c.name == p.name, db.profiles.c.version == previous_version))
                .values(**p.row())
            )
            if done.rowcount != 1:
                raise Conflict(f"profile {p.name!r} was changed by another instance meanwhile: try again")

    def delete_profile(self, name: str) -> None:
        self.profile(name)
        if self.engine is not None:
            with self.engine.begin() as c:
                c.execute(delete(db.references).where(db.references.c.profile == name))
                c.execute(delete(db.profiles).where(db.profiles.c.name == name))
        del self.profiles[name]
        self.detectors.pop(name, None)
        self._drop_unused_backends()

    def _drop_unused_backends(self) -> None:
        used = {id(d.backend) for d in self.detectors.values()}
        for key in [k for k, b in self.backends.items() if id(b) not in used]:
            del self.backends[key]

    def describe(self, name: str) -> dict[str, Any]:
        p = self.profile(name)
        det = self.detectors.get(name)
        stale = det.stale_thresholds() if det is not None else None
        return {
            **{k: getattr(p, k) for k in ("name", *PROFILE_FIELDS, "version")},
            "mode": "checkpoint" if p.checkpoint else ("exported" if p.exported else "training-free"),
            "thresholds": p.thresholds.to_dict(),
            "threshold_stale": stale,
            "references": self.reference_count(name),
            "bank_sha256": p.bank_sha256,
            "created_at": p.created_at,
            "updated_at": p.updated_at,
        }

    def changed_profiles(self) -> list[str]:
        """Profiles another instance changed (or created, or deleted) since this one last looked: reloaded here from
        the database, their detectors dropped so the next use rebuilds them. Runs on the forward thread."""
        if self.engine is None:
            return []
        with self.engine.connect() as c:
            rows = {row.name: row for row in c.execute(select(db.profiles))}
        changed = []
        for name, row in rows.items():
            if name not in self.profiles or self.profiles[name].version != row.version:
                self.profiles[name] = Profile.from_row(row)
                self.detectors.pop(name, None)
                changed.append(name)
        for name in set(self.profiles) - set(rows):
            del self.profiles[name]
            self.detectors.pop(name, None)
            changed.append(name)
        if changed:
            self._drop_unused_backends()
        return changed

    # -- references ------------------------------------------------------------------------------------------------
    def reference_count(self, name: str) -> int:
        if self.engine is None:
            det = self.detectors.get(name)
            return det.references.images if det is not None and det.references is not None else 0
        with self.engine.connect() as c:
            count = c.execute(select(func.count()).where(db.references.c.profile == name)).scalar()
        return int(count or 0)

    def save_bank(self, name: str, bank: ReferenceBank | None, added: Sequence[tuple[str, bytes]] = ()) -> None:
        """Commit a profile's new bank (None: cleared) and the good parts it added (source, bytes): files first,
        then one transaction; the thresholds become stale through the bank id in their basis."""
        p = self.profile(name)
        bank_sha = None
        if self.store is not None and bank is not None:
            for _, data in added:
                self.store.put(data)
            bank_sha = self.store.put(_bank_bytes(bank))
        new = dataclasses.replace(p, bank_sha256=bank_sha, version=p.version + 1, updated_at=time.time())
        if self.engine is not None:
            with self.engine.begin() as c:
                if bank is None:
                    c.execute(delete(db.references).where(db.references.c.profile == name))
                held = {
                    r.sha256 for r in c.execute(select(db.references.c.sha256).where(db.references.c.profile == name))
                }
                rows = {}
                for source, data in added:
                    digest = _sha256(data)
                    if digest not in held:
                        rows[digest] = {"profile": name, "sha256": digest, "source": source, "added_at": time.time()}
                if rows:
                    c.execute(insert(db.references), list(rows.values()))
                done = c.execute(
                    update(db.profiles)
                    .where(and_(db.profiles.c.name == name, db.profiles.c.version == p.version))
                    .values(bank_sha256=bank_sha, version=new.version, updated_at=new.updated_at)
                )
                if done.rowcount != 1:
                    raise Conflict(f"profile {name!r} was changed by another instance meanwhile: try again")
        self.profiles[name] = new

    def add_good_parts(self, name: str, parts: Sequence[tuple[str, bytes]]) -> ReferenceBank:
        """Good parts (source, bytes) into a profile's bank, committed, then used (forward thread); serve spreads the
        same steps over its threads."""
        det = self.detector(name)
        bank = det.extended_bank(det.encode_references([data for _, data in parts]))
        self.save_bank(name, bank, parts)
        det.use_references(bank)
        return bank

    def configure(self, name: str, run: RunConfig) -> Profile:
        """`serve --profile NAME` (and `watch`): create the profile, or change it with the flags given (class name;
        checkpoint, engine and exported folder together), then add `--reference` images or replace the bank with a
        `.kref`, and take `--calibration`/`--threshold`. No flags: the profile as stored."""
        fields: dict[str, Any] = {} if run.class_name is None else {"class_name": run.class_name}
        if run.checkpoint is not None or run.exported is not None or run.engine != "torch" or run.model_changes:
            fields |= {k: getattr(run, k) for k in MODEL_FIELDS}
        if name not in self.profiles or fields:
            self.put_profile(name, fields)
        det = self.detector(name)
        if len(run.references) == 1 and run.references[0].endswith(".kref"):
            bank = ReferenceBank.load(run.references[0])
            det.use_references(bank)
            self.save_bank(name, bank)
        elif run.references:
            paths = expand_inputs(run.references)[0]
            self.add_good_parts(name, [(str(path), Path(path).read_bytes()) for path in paths])
        if run.calibration is not None or run.image_threshold is not None:
            thresholds = det.thresholds
            if run.calibration is not None:
                thresholds = read_standalone(run.calibration, det.config.to_dict())[0]
            if run.image_threshold is not None:
                thresholds = Thresholds(run.image_threshold, thresholds.pixel_threshold)
            self.set_thresholds(name, thresholds)
        return self.profiles[name]

    def rebuild_bank(self, name: str) -> None:
        """Re-encode a profile's stored good parts with its model as it is now (after a change of model)."""
        if self.engine is None or self.store is None:
            return
        with self.engine.connect() as c:
            rows = list(c.execute(select(db.references).where(db.references.c.profile == name)))
        det = self.detector(name)
        if not rows or not det.supports(REFERENCES):
            return
        det.clear_references()
        bank = det.add_references([self.store.get(r.sha256) for r in rows])
        self.save_bank(name, bank)

    def reference_images(self, name: str) -> list[tuple[str, bytes]]:
        if self.engine is None or self.store is None:
            raise Conflict("this server keeps no state (--no-state): its good parts are not stored")
        with self.engine.connect() as c:
            rows = list(
                c.execute(
                    select(db.references)
                    .where(db.references.c.profile == name)
                    .order_by(db.references.c.added_at, db.references.c.source)
                )
            )
        return [(r.source, self.store.get(r.sha256)) for r in rows]

    # -- history ---------------------------------------------------------------------------------------------------
    def record(self, name: str, det: Detector, detections: Sequence[Detection], latency_ms: float) -> None:
        """Each detection, scored by `det`, as a row: its files into the store first, then all rows of the request
        in one transaction. Sets `result_id`; when this returns, the rows are committed and the files on disk."""
        if self.engine is None or self.store is None:
            return
        now = time.time()
        described = det.describe()
        t = det.thresholds
        stale = det.stale_thresholds()
        bank = det.references.id if det.references else None
        rows = []
        for d in detections:
            p = d.prediction
            files = artifacts(d.rgb, p, det) if p.error is None else None
            image_sha = self.store.put(d.data)
            overlay_sha = map_sha = None
            stored = len(d.data)
            if files is not None:
                d.overlay_png = files[0]
                overlay_sha, map_sha = self.store.put(files[0]), self.store.put(files[1])
                stored += len(files[0]) + len(files[1])
            rows.append(
                {
                    "created_at": now,
                    "profile": name,
                    "source": d.source,
                    "image_sha256": image_sha,
                    "overlay_sha256": overlay_sha,
                    "map_sha256": map_sha,
                    "stored_bytes": stored,
                    "score": p.pred_score,
                    "label": p.pred_label,
                    "error": p.error,
                    "image_threshold": t.image_threshold,
                    "pixel_threshold": t.pixel_threshold,
                    "threshold_basis": t.basis,
                    "threshold_stale": stale,
                    "bank_id": bank,
                    "backbone_fingerprint": described["backbone_fingerprint"],
                    "checkpoint_sha256": described["checkpoint_sha256"],
                    "engine": described["engine"],
                    "precision": described["precision"],
                    "latency_ms": latency_ms,
                    "instance": self.instance,
                    "frame_index": d.frame_index,
                    "frame_time": d.frame_time,
                }
            )
        try:
            with self.engine.begin() as c:
                ids = [c.execute(insert(db.results).values(**row)).inserted_primary_key[0] for row in rows]  # type: ignore[index]
                for d, result_id in zip(detections, ids, strict=True):
                    if d.key is not None:  # the claim is done in the same transaction as its result
                        c.execute(update(db.claims).where(db.claims.c.key == d.key).values(result_id=result_id))
        except OperationalError as e:
            if "full" in str(e.orig).lower() or "no space" in str(e.orig).lower():  # SQLITE_FULL, PostgreSQL's ENOSPC
                raise DiskFull(f"the database's disk is full: nothing was recorded ({e.orig})") from e
            raise
        for d, result_id in zip(detections, ids, strict=True):
            d.result_id = int(result_id)

    def claim(self, name: str, key: str, source: str, timeout_s: float) -> str:
        """Take a file for scoring, once across restarts and watchers: "mine" (score it, then `record` with this
        key), "done" (its result is recorded), or "busy" (another watcher took it less than `timeout_s` ago; a claim
        older than that, never finished, is taken over)."""
        engine, now = self._history(), time.time()
        c_ = db.claims.c
        with engine.begin() as c:
            row = c.execute(select(db.claims).where(c_.key == key)).first()
            if row is None:
                try:
                    with c.begin_nested():
                        c.execute(
                            insert(db.claims).values(
                                key=key, profile=name, source=source, claimed_by=self.instance, claimed_at=now
                            )
                        )
                    return "mine"
                except IntegrityError:  # another watcher inserted it between our look and our insert
                    row = c.execute(select(db.claims).where(c_.key == key)).first()
            assert row is not None
            if row.result_id is not None:
                return "done"
            if now - row.claimed_at < timeout_s and row.claimed_by != self.instance:
                return "busy"
            taken = c.execute(
                update(db.claims)
                .where(and_(c_.key == key, c_.claimed_at == row.claimed_at, c_.result_id.is_(None)))
                .values(claimed_by=self.instance, claimed_at=now)
            )
            return "mine" if taken.rowcount == 1 else "busy"

    def claimed_label(self, key: str) -> int | None:
        """The label recorded for a finished claim (None: unlabelled, failed, or not finished)."""
        with self._history().connect() as c:
            row = c.execute(
                select(db.results.c.label)
                .join(db.claims, db.claims.c.result_id == db.results.c.id)
                .where(db.claims.c.key == key)
            ).first()
        return None if row is None else row.label

    def claimed_result(self, key: str) -> dict[str, Any] | None:
        with self._history().connect() as c:
            row = c.execute(
                select(db.results)
                .join(db.claims, db.claims.c.result_id == db.results.c.id)
                .where(db.claims.c.key == key)
            ).first()
        return None if row is None else dict(row._mapping)

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
        query = select(db.events).order_by(db.events.c.id.desc()).limit(limit)
        if name is not None:
            query = query.where(db.events.c.profile == name)
        with self._history().connect() as c:
            return [dict(row._mapping) for row in c.execute(query)]

    def results(
        self,
        profile: str | None = None,
        since: float | None = None,
        until: float | None = None,
        label: int | None = None,
        limit: int = 100,
        cursor: int | None = None,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Newest first, `limit` rows after `cursor` (keyset pagination on the id: the same cost on page 1 and page
        10,000), and the cursor of the next page (None: the last)."""
        engine = self._history()
        r = db.results.c
        query = select(db.results)
        if profile is not None:
            query = query.where(r.profile == profile)
        if since is not None:
            query = query.where(r.created_at >= since)
        if until is not None:
            query = query.where(r.created_at < until)
        if label is not None:
            query = query.where(r.label == label)
        if cursor is not None:
            query = query.where(r.id < cursor)
        query = query.order_by(r.id.desc()).limit(limit + 1)
        with engine.connect() as c:
            rows = [dict(row._mapping) for row in c.execute(query)]
            more = len(rows) > limit
            rows = rows[:limit]
            verdicts = {  # the latest verdict on each row of the page, by one query on the page's ids
                result_id: verdict
                for result_id, verdict in c.execute(
                    select(db.feedback.c.result_id, db.feedback.c.verdict)
                    .where(db.feedback.c.result_id.in_([row["id"] for row in rows]))
                    .order_by(db.feedback.c.id)
                )
            }
        for row in rows:
            row["verdict"] = verdicts.get(row["id"])
        return rows, (rows[-1]["id"] if more and rows else None)

    def iter_results(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every matching row, newest first, a page at a time (memory holds one page)."""
        cursor = None
        while True:
            rows, cursor = self.results(**filters, limit=1000, cursor=cursor)
            yield from rows
            if cursor is None:
                return

    def result(self, result_id: int) -> dict[str, Any]:
        engine = self._history()
        with engine.connect() as c:
            row = c.execute(select(db.results).where(db.results.c.id == result_id)).first()
            if row is None:
                raise NotFound(f"no result {result_id}")
            verdicts = c.execute(
                select(db.feedback).where(db.feedback.c.result_id == result_id).order_by(db.feedback.c.id)
            )
            out = dict(row._mapping)
            out["feedback"] = [{k: f._mapping[k] for k in ("verdict", "note", "created_at")} for f in verdicts]
        return out

    def blob(self, sha256: str | None) -> bytes | None:
        return None if sha256 is None or self.store is None else self.store.get(sha256)

    def _history(self) -> Engine:
        if self.engine is None:
            raise Conflict("this server keeps no history (started with --no-state)")
        return self.engine

    # -- feedback and thresholds -----------------------------------------------------------------------------------
    def feedback(self, result_id: int, verdict: str, note: str | None) -> dict[str, Any]:
        """Record a verdict on a result; the caller adds a "good" part to the profile's bank."""
        if verdict not in ("good", "defect"):
            raise ConfigError(f"verdict must be 'good' or 'defect', got {verdict!r}")
        row = self.result(result_id)
        with self._history().begin() as c:
            c.execute(
                insert(db.feedback).values(result_id=result_id, verdict=verdict, note=note, created_at=time.time())
            )
        return row

    def labelled(self, name: str) -> dict[str, list[bytes]]:
        """The profile's images by their latest verdict: {"good": [...], "defect": [...]}, each image once."""
        f, r = db.feedback.c, db.results.c
        latest = (
            select(f.result_id, func.max(f.id).label("last"))
            .join(db.results, r.id == f.result_id)
            .where(r.profile == name)
            .group_by(f.result_id)
            .subquery()
        )
        query = (
            select(f.verdict, r.image_sha256).join(latest, f.id == latest.c.last).join(db.results, r.id == f.result_id)
        )
        out: dict[str, dict[str, None]] = {"good": {}, "defect": {}}
        with self._history().connect() as c:
            for verdict, sha in c.execute(query):
                if sha is not None:
                    out[verdict][sha] = None
        assert self.store is not None
        return {k: [self.store.get(sha) for sha in v] for k, v in out.items()}

    def calibrate(self, name: str, false_alarm_rate: float = 0.01) -> dict[str, Any]:
        """Thresholds from what the station knows of this profile (forward thread). Normal scores are leave-one-out
        scores of its good parts: each scored against a bank of all the others, as it would be scored if it were
        new. With parts marked defect too, the F1-max threshold between the two; else the false-alarm quantile,
        with the count it rests on. The profile's bank is back in place afterwards."""
        det = self.detector(name)
        if not det.supports(REFERENCES):
            raise Conflict("an exported engine's thresholds are baked in: calibrate before `kanoclip export`")
        references = self.reference_images(name)
        goods = [data for _, data in references]
        if len(goods) < 2:
            raise Conflict(
                f"profile {name!r} has {len(goods)} good part(s): calibration needs at least 2 (add references or "
                "mark results good)"
            )
        defects = self.labelled(name)["defect"]
        bank = det.references
        normal_scores, normal_maps = leave_one_out(det, goods)
        try:
            defect_scores = [p.pred_score for p in det.predict_many(defects)] if defects else []
        finally:
            det.use_references(bank)
        if defect_scores:
            labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(defect_scores))]
            image = f1_max_threshold(labels, np.r_[normal_scores, defect_scores])
        else:
            image = false_alarm_threshold(normal_scores, false_alarm_rate)
        pixel = false_alarm_threshold(np.concatenate([m.ravel() for m in normal_maps]), false_alarm_rate, "pixels")
        pixel.images = len(normal_maps)
        thresholds = Thresholds(image.value, pixel.value, det.threshold_basis())
        self.set_thresholds(name, thresholds)
        return {
            "image_threshold": image.value,
            "pixel_threshold": pixel.value,
            "image": dataclasses.asdict(image),
            "pixel": dataclasses.asdict(pixel),
            "basis": thresholds.basis,
            "good_parts": len(goods),
            "defects": len(defect_scores),
            "leave_one_out": [
                {"source": source, "sha256": _sha256(data), "score": float(score)}
                for (source, data), score in zip(references, normal_scores, strict=True)
            ],
        }

    def set_thresholds(self, name: str, thresholds: Thresholds) -> None:
        p = self.profile(name)
        new = dataclasses.replace(p, thresholds=thresholds, version=p.version + 1, updated_at=time.time())
        if self.engine is not None:
            with self.engine.begin() as c:
                done = c.execute(
                    update(db.profiles)
                    .where(and_(db.profiles.c.name == name, db.profiles.c.version == p.version))
                    .values(thresholds=thresholds.to_dict(), version=new.version, updated_at=new.updated_at)
                )
                if done.rowcount != 1:
                    raise Conflict(f"profile {name!r} was changed by another instance meanwhile: try again")
        self.profiles[name] = new
        if name in self.detectors:
            self.detectors[name].thresholds = thresholds

    # -- retention -------------------------------------------------------------------------------------------------
    def prune(self, keep_days: float | None, max_store_bytes: int | None, step: int = 500) -> int:
        """Drop the oldest results past `keep_days` or while the rows' files hold more than `max_store_bytes`, `step`
        rows per transaction (a long prune never holds the database), then their files that nothing else names.
        Returns how many rows went."""
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


def leave_one_out(det: Detector, goods: Sequence[bytes]) -> tuple[NDArray[np.float64], list[NDArray[np.float32]]]:
    """Each good part scored against a bank of the others (encoded once each; one bank per part, built without the
    model). Leaves the detector on the last of those banks: the caller restores its own."""
    if not goods:
        return np.zeros(0), []
    det.clear_references()
    parts = [det.encode_references([g]) for g in goods]
    scores, maps = [], []
    for i, good in enumerate(goods):
        others = [p for j, p in enumerate(parts) if j != i and p.sources]
        bank = ReferenceBank([], det.backend.reference_identity())  # type: ignore[attr-defined]
        for part in others:
            bank = bank.extended(part.levels, part.sources, det.config.reference_max_patches)
        det.use_references(bank)
        p = det.predict_many([good])[0]
        if p.pred_score is None or p.anomaly_map is None:
            raise KanoclipError(p.error or "a good part could not be scored")
        scores.append(p.pred_score)
        maps.append(p.anomaly_map)
    return np.asarray(scores, dtype=np.float64), maps


def _tuples(value: Any) -> Any:
    """JSON lists back into the tuples a config holds (tap layers...), so equal profiles compare equal."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _bank_bytes(bank: ReferenceBank) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return bank.save(Path(tmp) / "bank.kref").read_bytes()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_time(value: str | None) -> float | None:
    """An ISO 8601 time (UTC unless it says otherwise) or seconds since the epoch; None stays None."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{value!r} is not a time: give ISO 8601 (2026-12-01T08:00) or seconds since 1970") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


HISTORY_COLUMNS = (
    "id",
    "time",
    "profile",
    "source",
    "score",
    "label",
    "verdict",
    "error",
    "image_threshold",
    "threshold_stale",
    "bank_id",
    "backbone_fingerprint",
    "checkpoint_sha256",
    "engine",
    "precision",
    "latency_ms",
    "image_sha256",
    "instance",
    "frame_index",
    "frame_time",
)


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A result row as the API and the CSV show it: its time in ISO 8601."""
    out = {k: row.get(k) for k in HISTORY_COLUMNS if k != "time"}
    out["time"] = iso(row["created_at"])
    out["threshold_basis"] = row.get("threshold_basis")
    return out
