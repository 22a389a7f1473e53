"""`kanoclip station check`: a state's rows against its files.

The rule: a row names only files the store holds (a missing one is reported, never invented), and a file that no
result, good part or bank names is an orphan (a lost claim race, a crash between a put and its row), removed with
`--fix` once it is past the put grace: a request in flight may be about to name it. So is the temporary file of a
put that a crash stopped before its rename: nothing else ever removes it. A model version's row names its folder,
which must hold its weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select

from kanoclip.model.checkpoint import WEIGHTS
from kanoclip.station import db
from kanoclip.station.profiles import IN_STATE
from kanoclip.station.store import BlobStore


def version_folder(store: BlobStore, checkpoint: str) -> Path:
    """A model version's folder (`state:models/...`) in the state whose store this is."""
    return store.root.parent / checkpoint.removeprefix(IN_STATE)


@dataclass
class CheckReport:
    rows: int = 0
    files: int = 0
    dangling: list[tuple[str, str]] = field(default_factory=list)  # (what names it, the missing file's sha256)
    orphans: list[str] = field(default_factory=list)  # sha256 of files nothing names, then unfinished puts' names
    removed: int = 0

    @property
    def clean(self) -> bool:
        return not self.dangling and len(self.orphans) == self.removed


def check(engine: Engine, store: BlobStore, fix: bool = False) -> CheckReport:
    """What the state's rows name that its store lacks, and what its store holds that nothing names."""
    report, named = CheckReport(), set()
    r = db.results.c
    with engine.connect() as c:
        for row in c.execute(select(r.id, r.image_sha256, r.overlay_sha256, r.map_sha256)):
            report.rows += 1
            for sha in (h for h in row[1:] if h):
                named.add(sha)
                if not store.exists(sha):
                    report.dangling.append((f"result {row.id}", sha))
        for (sha,) in c.execute(select(db.references.c.sha256)):
            named.add(sha)
            if not store.exists(sha):
                report.dangling.append(("a good part", sha))
        for name, sha in c.execute(select(db.profiles.c.name, db.profiles.c.bank_sha256)):
            if sha:
                named.add(sha)
                if not store.exists(sha):
                    report.dangling.append((f"profile {name!r}'s bank", sha))
        for uid, sha in c.execute(select(db.defect_examples.c.profile_uid, db.defect_examples.c.sha256)):
            named.add(sha)
            if not store.exists(sha):
                report.dangling.append((f"a defect example of profile uid {uid}", sha))
        for name, checkpoint in c.execute(select(db.profiles.c.name, db.profiles.c.checkpoint)):
            if (
                checkpoint
                and checkpoint.startswith(IN_STATE)
                and not (version_folder(store, checkpoint) / WEIGHTS).is_file()
            ):
                report.dangling.append((f"profile {name!r}'s model", checkpoint))
        v = db.model_versions.c
        for name, number, checkpoint in c.execute(select(v.profile, v.version, v.checkpoint)):
            if not (version_folder(store, checkpoint) / WEIGHTS).is_file():
                report.dangling.append((f"profile {name!r}'s model version {number}", checkpoint))
    stored = set(store.names())
    report.files = len(stored)
    unnamed, unfinished = sorted(stored - named), store.unfinished()
    report.orphans = unnamed + [p.name for p in unfinished]
    if fix:
        report.removed = sum(store.delete_unneeded(sha) for sha in unnamed)
        report.removed += sum(store.delete_unfinished(path) for path in unfinished)
    return report
