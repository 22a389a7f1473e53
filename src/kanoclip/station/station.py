"""The inspection station: profiles (one per product or line), their banks and thresholds, and every result, kept
in the station's database (`database`) and content-addressed store (`store`), so that what a server is taught and
what it inspected survive restarts and are shared by several servers.

`Station` is the one object callers hold; each rule it keeps lives in one component beside it: `profiles` (a row is
the truth, memory follows it), `banks` (a bank is kept with the good parts it was built from), `results` (a result is
recorded only with its files), `claims` (a file is recorded once, by the holder of its claim), `retention` (a file
goes only once nothing names it) and `teaching` (verdicts and calibration). Everything that conditions or runs a
shared model runs on the caller's forward thread (serve's `MicroBatcher.exclusive`); database work runs anywhere.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from kanoclip.inference.backends import Backend
from kanoclip.inference.config import RunConfig
from kanoclip.inference.detector import Detector
from kanoclip.inference.thresholds import Thresholds, read_standalone
from kanoclip.model.references import ReferenceBank
from kanoclip.station import db
from kanoclip.station.banks import BankChange, Banks
from kanoclip.station.claims import Claimed, Claims
from kanoclip.station.errors import Conflict, NotFound
from kanoclip.station.jobs import JobFolders, Jobs
from kanoclip.station.profiles import DEFAULT_PROFILE, MODEL_FIELDS, Profile, Profiles, backend_key
from kanoclip.station.results import HISTORY_COLUMNS, Detection, Results, iso, parse_time, public
from kanoclip.station.retention import Retention
from kanoclip.station.store import BlobStore, private_folder
from kanoclip.station.teaching import Forward, Teaching, on_this_thread
from kanoclip.station.versions import Versions

__all__ = [
    "DEFAULT_PROFILE",
    "HISTORY_COLUMNS",
    "Conflict",
    "Detection",
    "NotFound",
    "Profile",
    "Station",
    "backend_key",
    "iso",
    "parse_time",
    "public",
]


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
        self._profiles = Profiles(base, engine, self.store)
        self._banks = Banks(self._profiles)
        self._results = Results(engine, self.store, self.instance)
        self._claims = Claims(engine, self.instance)
        self._retention = Retention(engine, self.store)
        self._teaching = Teaching(self._profiles, self._banks, self._results)
        folders = JobFolders(folder) if folder is not None else None
        self._jobs = Jobs(engine, folders, self.instance) if engine is not None and folders else None
        self._versions = Versions(engine, folders) if engine is not None and folders else None

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
            try:
                private_folder(state)  # 0700, synced, and refused in words when read-only
            except BaseException:
                engine.dispose()
                raise
            return cls(base, engine, state)
        private_folder(state)
        return cls(base, db.connect(db.database_url(state)), state)

    @property
    def keeps(self) -> bool:
        return self.engine is not None

    @property
    def profiles(self) -> dict[str, Profile]:
        """The profiles by name, as this instance last read them."""
        return self._profiles.by_name

    @property
    def detectors(self) -> dict[str, Detector]:
        """The detectors built so far, by profile name."""
        return self._profiles.detectors

    @property
    def backends(self) -> dict[RunConfig, Backend]:
        """The models in memory, shared by the profiles whose `backend_key` is equal."""
        return self._profiles.backends

    # -- profiles (`profiles.Profiles`) ----------------------------------------------------------------------------
    def profile(self, name: str) -> Profile:
        return self._profiles.get(name)

    def detector(self, name: str) -> Detector:
        return self._profiles.detector(name)

    def put_profile(self, name: str, fields: dict[str, Any], create: bool | None = None) -> Profile:
        with self._retiring_banks():
            return self._profiles.put(name, fields, create, self._banks.rebuild)

    def delete_profile(self, name: str) -> None:
        uid = self.profile(name).uid
        with self._retiring_banks():
            self._profiles.delete(name)
        if self._jobs is not None and self._versions is not None:
            self._jobs.cancel_profile(uid)
            self._versions.forget([uid])

    def describe(self, name: str) -> dict[str, Any]:
        return self._profiles.describe(name, self._banks.count(name))

    def changed_profiles(self) -> list[str]:
        return self._profiles.changed()

    def set_thresholds(self, name: str, thresholds: Thresholds) -> None:
        self._profiles.set_thresholds(name, thresholds)

    def run_of(self, p: Profile) -> RunConfig:
        """How a detector of this profile runs (a version's checkpoint found in the state folder)."""
        return self._profiles.run_of(p)

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
        with self._retiring_banks():
            self._banks.take(name, run.references)
        if run.calibration is not None or run.image_threshold is not None:
            thresholds = det.thresholds
            if run.calibration is not None:
                thresholds = read_standalone(run.calibration, det.config.to_dict())[0]
            if run.image_threshold is not None:
                thresholds = Thresholds(run.image_threshold, thresholds.pixel_threshold)
            self.set_thresholds(name, thresholds)
        return self.profiles[name]

    # -- banks (`banks.Banks`) -------------------------------------------------------------------------------------
    def reference_count(self, name: str) -> int:
        return self._banks.count(name)

    def good_part_images(self, name: str) -> list[tuple[str, bytes]]:
        return self._banks.images(name)

    def good_parts(self, name: str) -> set[str]:
        return self._banks.held(name)

    def save_bank(self, name: str, bank: ReferenceBank | None, added: Sequence[tuple[str, bytes]] = ()) -> None:
        with self._retiring_banks():
            self._banks.save(name, bank, added)

    @contextmanager
    def _retiring_banks(self) -> Iterator[None]:
        """The bank files this instance's change replaced, retired once it is done (`Retention.retire`): the store
        keeps one bank per profile, not one per verdict."""
        before = {p.bank_sha256 for p in self.profiles.values() if p.bank_sha256}
        try:
            yield
        finally:
            for sha256 in before - {p.bank_sha256 for p in self.profiles.values()}:
                self._retention.retire(sha256)

    def stage_bank(
        self, bank: ReferenceBank | None, added: Sequence[tuple[str, bytes]] = (), removed: Sequence[str] = ()
    ) -> BankChange:
        return self._banks.stage(bank, added, removed)

    def bank_without(self, name: str, det: Detector, sha256: str) -> ReferenceBank | None:
        return self._banks.without(name, det, sha256)

    # -- history (`results.Results`, `claims.Claims`, `retention.Retention`) ---------------------------------------
    def record(self, name: str, det: Detector, detections: Sequence[Detection], latency_ms: float) -> None:
        self._results.record(name, det, detections, latency_ms)

    def results(
        self,
        profile: str | None = None,
        since: float | None = None,
        until: float | None = None,
        label: int | None = None,
        limit: int = 100,
        cursor: int | None = None,
    ) -> tuple[list[dict[str, Any]], int | None]:
        return self._results.page(profile, since, until, label, limit, cursor)

    def iter_results(self, **filters: Any) -> Iterator[dict[str, Any]]:
        return self._results.iter_rows(**filters)

    def result(self, result_id: int) -> dict[str, Any]:
        return self._results.get(result_id)

    def blob(self, sha256: str | None) -> bytes | None:
        return self._results.blob(sha256)

    def claim(self, name: str, key: str, source: str, timeout_s: float, holder: str) -> Claimed:
        return self._claims.claim(name, key, source, timeout_s, holder)

    def release(self, holder: str) -> int:
        return self._claims.release(holder)

    def claimed_label(self, key: str) -> int | None:
        return self._claims.claimed_label(key)

    def claimed_result(self, key: str) -> dict[str, Any] | None:
        return self._claims.claimed_result(key)

    def event(self, name: str | None, source: str, kind: str, detail: str) -> None:
        self._claims.event(name, source, kind, detail)

    def events(self, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return self._claims.events(name, limit)

    def sweep_store(self) -> None:
        self._retention.sweep_store()

    def prune(self, keep_days: float | None, max_store_bytes: int | None, step: int = 500) -> int:
        return self._retention.prune(keep_days, max_store_bytes, step)

    # -- teaching (`teaching.Teaching`) ----------------------------------------------------------------------------
    def taught(self, row: dict[str, Any]) -> Profile | None:
        return self._teaching.taught(row)

    def feedback(
        self,
        result_id: int,
        verdict: str,
        note: str | None,
        change: BankChange | None = None,
        defect_type: str | None = None,
    ) -> dict[str, Any]:
        with self._retiring_banks():
            return self._teaching.feedback(result_id, verdict, note, change, defect_type)

    def defect_type_counts(self, name: str, since: float | None = None, until: float | None = None) -> dict[str, int]:
        """How many of the profile's results were judged anomalous with each type, in the window."""
        return self._results.type_counts(name, since, until)

    def calibrate(self, name: str, false_alarm_rate: float = 0.01, forward: Forward = on_this_thread) -> dict[str, Any]:
        return self._teaching.calibrate(name, false_alarm_rate, forward)

    # -- adapt jobs and model versions (`jobs.Jobs`, `versions.Versions`) ------------------------------------------
    @property
    def jobs(self) -> Jobs:
        if self._jobs is None:
            raise Conflict("this server keeps no state (--no-state): adapt jobs and model versions need one")
        return self._jobs

    @property
    def versions(self) -> Versions:
        if self._versions is None:
            raise Conflict("this server keeps no state (--no-state): adapt jobs and model versions need one")
        return self._versions

    def promote(self, name: str, number: int, keep: int) -> Profile:
        """Make model version `number` the profile's model (forward thread: its bank is rebuilt from the stored good
        parts), with the thresholds it was calibrated to; what it replaces is kept for `rollback`. A version pruned
        while its bank was rebuilt (a new version recorded meanwhile) is undone at once and refused."""
        promoted = self.put_profile(name, self.versions.promoted(self.profile(name), number, keep), create=False)
        try:
            self.versions.get(promoted, number)
        except NotFound:
            self.rollback(name)
            raise Conflict(f"model version {number} was pruned while it was promoted: promote a newer one") from None
        return promoted

    def rollback(self, name: str) -> Profile:
        """Undo the last promote: the model, version and thresholds it replaced (forward thread)."""
        return self.put_profile(name, self.versions.rolled_back(self.profile(name)), create=False)
