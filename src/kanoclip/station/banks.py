"""Reference banks: the good parts kept per profile and the bank built from them.

The rule: a bank is kept only with the good parts it was built from. The parts' files and the bank file go into the
store first (`stage`: a row never names a missing file); then one transaction (`commit`, inside the caller's, so a
verdict commits with its bank change) records the parts the profile does not hold yet (each image once per profile, by
its sha256), drops the parts it lost and points the profile at the new bank, over the version this instance read.
Thresholds set on the old bank become stale through the bank id in their basis, in that same commit. A bank for a new
model, or without a part, is rebuilt from the stored parts.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Connection, delete, func, insert, select

from kanoclip.data.inputs import expand_inputs
from kanoclip.inference.backends import REFERENCES
from kanoclip.inference.detector import Detector
from kanoclip.model.references import ReferenceBank
from kanoclip.station import db
from kanoclip.station.errors import Conflict
from kanoclip.station.profiles import Profile, Profiles, update_profile
from kanoclip.station.store import sha256_of


@dataclasses.dataclass
class BankChange:
    """A bank staged for a commit, its files already in the store: the new bank (None: none), its file's sha256, the
    good parts it adds (source, bytes) and drops (sha256), and whether it clears every part first."""

    bank: ReferenceBank | None
    bank_sha256: str | None
    added: Sequence[tuple[str, bytes]] = ()
    removed: Sequence[str] = ()
    cleared: bool = False


class Banks:
    """The good parts and banks of the profiles in `profiles`, in its database and store."""

    def __init__(self, profiles: Profiles) -> None:
        self.profiles, self.engine, self.store = profiles, profiles.engine, profiles.store

    def count(self, name: str) -> int:
        """How many good parts the profile holds (without a database: its detector's bank)."""
        if self.engine is None:
            det = self.profiles.detectors.get(name)
            return det.references.images if det is not None and det.references is not None else 0
        with self.engine.connect() as c:
            count = c.execute(select(func.count()).where(db.references.c.profile == name)).scalar()
        return int(count or 0)

    def held(self, name: str) -> set[str]:
        """The sha256 of the good parts the profile holds, as the database has them now (another instance's change
        included, before this one has polled)."""
        if self.engine is None:
            det = self.profiles.detectors.get(name)
            return {s["sha256"] for s in det.references.sources} if det is not None and det.references else set()
        with self.engine.connect() as c:
            return set(c.execute(select(db.references.c.sha256).where(db.references.c.profile == name)).scalars())

    def stage(
        self, bank: ReferenceBank | None, added: Sequence[tuple[str, bytes]] = (), removed: Sequence[str] = ()
    ) -> BankChange:
        """The files of a bank change into the store (before any row names them): its new parts and bank file."""
        bank_sha = None
        if self.store is not None and bank is not None:
            for _, data in added:
                self.store.put(data)
            bank_sha = self.store.put(_bank_bytes(bank))
        return BankChange(bank, bank_sha, added, removed)

    def commit(self, c: Connection, p: Profile, change: BankChange) -> Profile:
        """The rows of a staged change in the caller's transaction `c`, over the profile's version as `p` has it
        (another instance's change in between is a `Conflict`). Returns the profile as it is once `c` commits."""
        new = dataclasses.replace(p, bank_sha256=change.bank_sha256, version=p.version + 1, updated_at=time.time())
        refs = db.references.c
        if change.cleared:
            c.execute(delete(db.references).where(refs.profile == p.name))
        if change.removed:
            c.execute(delete(db.references).where(refs.profile == p.name, refs.sha256.in_(list(change.removed))))
        held = {r.sha256 for r in c.execute(select(refs.sha256).where(refs.profile == p.name))}
        rows = {}
        for source, data in change.added:
            digest = sha256_of(data)
            if digest not in held:
                rows[digest] = {"profile": p.name, "sha256": digest, "source": source, "added_at": time.time()}
        if rows:
            c.execute(insert(db.references), list(rows.values()))
        values = {"bank_sha256": new.bank_sha256, "version": new.version, "updated_at": new.updated_at}
        update_profile(c, p.name, p.version, values)
        return new

    def save(self, name: str, bank: ReferenceBank | None, added: Sequence[tuple[str, bytes]] = ()) -> None:
        """Commit a profile's new bank (None: cleared) and the good parts it added (source, bytes): files first,
        then one transaction."""
        p = self.profiles.get(name)
        change = dataclasses.replace(self.stage(bank, added), cleared=bank is None)
        if self.engine is None:
            self.profiles.by_name[name] = dataclasses.replace(p, version=p.version + 1, updated_at=time.time())
            return
        with self.engine.begin() as c:
            new = self.commit(c, p, change)
        self.profiles.by_name[name] = new

    def add_good_parts(self, name: str, parts: Sequence[tuple[str, bytes]]) -> ReferenceBank:
        """Good parts (source, bytes) into a profile's bank, committed, then used (forward thread); serve spreads the
        same steps over its threads."""
        det = self.profiles.detector(name)
        bank = det.extended_bank(det.encode_references([data for _, data in parts]))
        self.save(name, bank, parts)
        det.use_references(bank)
        return bank

    def take(self, name: str, references: Sequence[str]) -> None:
        """`--reference` on the command line: one `.kref` replaces the bank; images or folders add good parts."""
        if len(references) == 1 and references[0].endswith(".kref"):
            bank = ReferenceBank.load(references[0])
            self.profiles.detector(name).use_references(bank)
            self.save(name, bank)
        elif references:
            paths = expand_inputs(references)[0]
            self.add_good_parts(name, [(str(path), Path(path).read_bytes()) for path in paths])

    def rebuild(self, name: str, det: Detector) -> str | None:
        """A new model's bank (`det`, not yet in use) from the profile's stored good parts: its file's sha256 in the
        store, used by `det`; None without parts (or without a store). The parts stay as they are."""
        if self.engine is None or self.store is None or not det.supports(REFERENCES):
            return None
        bank = fresh_bank(det, [data for _, data in self.images(name)])
        det.use_references(bank)
        return None if bank is None else self.store.put(_bank_bytes(bank))

    def without(self, name: str, det: Detector, sha256: str) -> ReferenceBank | None:
        """The profile's bank rebuilt from its stored good parts less one (forward thread); `det` keeps its bank."""
        return fresh_bank(det, [data for _, data in self.images(name) if sha256_of(data) != sha256])

    def images(self, name: str) -> list[tuple[str, bytes]]:
        """The profile's good parts (source, bytes), oldest first."""
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


def fresh_bank(det: Detector, images: Sequence[bytes]) -> ReferenceBank | None:
    """A bank of these images alone, encoded by `det` (forward thread), which is left on the bank it had."""
    if not images:
        return None
    bank = det.references
    try:
        det.clear_references()
        return det.extended_bank(det.encode_references(images))
    finally:
        det.use_references(bank)


def _bank_bytes(bank: ReferenceBank) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return bank.save(Path(tmp) / "bank.kref").read_bytes()
