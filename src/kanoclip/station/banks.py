"""Reference banks: the good parts kept per profile and the bank built from them.

The rule: a bank is kept only with the good parts it was built from. The parts' files and the bank file go into the
store first (a row never names a missing file); then one transaction records the parts the profile does not hold yet
(each image once per profile, by its sha256) and points the profile at the new bank, over the version this instance
read. Thresholds set on the old bank become stale through the bank id in their basis.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import delete, func, insert, select

from kanoclip.data.inputs import expand_inputs
from kanoclip.inference.backends import REFERENCES
from kanoclip.model.references import ReferenceBank
from kanoclip.station import db
from kanoclip.station.errors import Conflict
from kanoclip.station.profiles import Profiles, update_profile
from kanoclip.station.store import sha256_of


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

    def save(self, name: str, bank: ReferenceBank | None, added: Sequence[tuple[str, bytes]] = ()) -> None:
        """Commit a profile's new bank (None: cleared) and the good parts it added (source, bytes): files first,
        then one transaction."""
        p = self.profiles.get(name)
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
                    digest = sha256_of(data)
                    if digest not in held:
                        rows[digest] = {"profile": name, "sha256": digest, "source": source, "added_at": time.time()}
                if rows:
                    c.execute(insert(db.references), list(rows.values()))
                values = {"bank_sha256": bank_sha, "version": new.version, "updated_at": new.updated_at}
                update_profile(c, name, p.version, values)
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

    def rebuild(self, name: str) -> None:
        """Re-encode a profile's stored good parts with its model as it is now (after a change of model)."""
        if self.engine is None or self.store is None:
            return
        with self.engine.connect() as c:
            rows = list(c.execute(select(db.references).where(db.references.c.profile == name)))
        det = self.profiles.detector(name)
        if not rows or not det.supports(REFERENCES):
            return
        det.clear_references()
        bank = det.add_references([self.store.get(r.sha256) for r in rows])
        self.save(name, bank)

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


def _bank_bytes(bank: ReferenceBank) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return bank.save(Path(tmp) / "bank.kref").read_bytes()
