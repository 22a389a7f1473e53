"""Teaching a profile from what the station saw: verdicts on results, and thresholds calibrated from them.

The rule: a verdict is recorded only on a result that exists, for the profile that result was recorded under (by its
uid: a profile created again under the same name starts clean), and commits with the bank change it makes; an image
counts as its latest verdict says, never both good and defect (calibrate counts a part in the bank as good only).
Calibration scores every good part as if it were new (leave-one-out, against a bank of all the others), needs at
least two, and changes nothing but the thresholds: the profile's own bank is back in place whatever fails.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, Engine, and_, delete, func, insert, select

from kanoclip.errors import ConfigError, KanoclipError
from kanoclip.evaluation.calibration import f1_max_threshold, false_alarm_threshold
from kanoclip.inference.backends import REFERENCES
from kanoclip.inference.config import check_type_name
from kanoclip.inference.detector import Detector, GoodParts
from kanoclip.inference.thresholds import Thresholds
from kanoclip.model.references import ReferenceBank
from kanoclip.station import db
from kanoclip.station.banks import BankChange, Banks
from kanoclip.station.errors import Conflict, history_engine
from kanoclip.station.profiles import Profile, Profiles, update_profile
from kanoclip.station.results import Results
from kanoclip.station.store import sha256_of

MAX_EXAMPLES = 1_000  # typed defect examples a profile keeps
MAX_TYPES = 64  # distinct types it learns: each is a series of the per-type counter, so the bound holds there too

# How calibrate runs one step of model work, `forward(work, *args)`: serve's runs it on the forward thread
Forward = Callable[..., Any]


def on_this_thread(work: Callable[..., Any], *args: Any) -> Any:
    """`Forward` for a caller that owns its detectors (the CLI, tests): the work, here and now."""
    return work(*args)


class Teaching:
    """Verdicts and calibration over one station's profiles, banks and results."""

    def __init__(self, profiles: Profiles, banks: Banks, results: Results) -> None:
        self.profiles, self.banks, self.results = profiles, banks, results
        self.engine, self.store = profiles.engine, profiles.store

    def taught(self, row: dict[str, Any]) -> Profile | None:
        """The profile a result's verdict teaches: the one of its name that existed when it was recorded (None when
        that profile was deleted since, even if another of its name exists now)."""
        p = self.profiles.by_name.get(row["profile"])
        return p if p is not None and row["created_at"] >= p.created_at else None

    def feedback(
        self,
        result_id: int,
        verdict: str,
        note: str | None,
        change: BankChange | None = None,
        defect_type: str | None = None,
    ) -> dict[str, Any]:
        """Record a verdict on a result, with the bank change it makes (staged by the caller: "good" adds the image,
        "defect" drops it) in the same transaction, over the profile's version as this instance read it. A "defect"
        with a type makes the image an example of that type for the profile; any later verdict on it replaces that.
        A change of examples leaves this instance's profile to be reloaded (`Profiles.changed`), with its detector."""
        if verdict not in ("good", "defect"):
            raise ConfigError(f"verdict must be 'good' or 'defect', got {verdict!r}")
        if defect_type is not None:
            if verdict != "defect":
                raise ConfigError(f"a type goes with a 'defect' verdict, not with {verdict!r}")
            defect_type = check_type_name(defect_type, "the verdict's type")
        row = self.results.get(result_id)
        p = self.taught(row)
        new = None
        with history_engine(self.engine).begin() as c:
            c.execute(
                insert(db.feedback).values(
                    result_id=result_id,
                    verdict=verdict,
                    note=note,
                    created_at=time.time(),
                    profile_uid=p and p.uid,
                    defect_type=defect_type,
                )
            )
            if change is not None and p is not None:
                new = self.banks.commit(c, p, change)
            examples = p is not None and row["image_sha256"] and self._examples(c, p, row, defect_type)
            if examples and p is not None and new is None:
                update_profile(c, p.name, p.version, {"version": p.version + 1, "updated_at": time.time()})
        if new is not None and not examples:
            self.profiles.by_name[new.name] = new
        return row

    @staticmethod
    def _examples(c: Connection, p: Profile, row: dict[str, Any], defect_type: str | None) -> bool:
        """The result's image as an example of `defect_type` for `p` (None: no longer an example); whether the
        profile's examples changed."""
        e = db.defect_examples.c
        where = and_(e.profile_uid == p.uid, e.sha256 == row["image_sha256"])
        was = c.execute(select(e.type).where(where)).scalar()
        if was == defect_type:
            return False
        c.execute(delete(db.defect_examples).where(where))
        if defect_type is None:
            return True
        held = list(c.execute(select(e.type).where(e.profile_uid == p.uid)).scalars())
        if len(held) >= MAX_EXAMPLES:
            raise Conflict(f"profile {p.name!r} holds {MAX_EXAMPLES} defect examples, the most it keeps")
        if defect_type not in held and len(set(held)) >= MAX_TYPES:
            raise Conflict(f"profile {p.name!r} has learned {MAX_TYPES} defect types, the most it keeps")
        c.execute(
            insert(db.defect_examples).values(
                profile_uid=p.uid,
                sha256=row["image_sha256"],
                type=defect_type,
                source=row["source"],
                added_at=time.time(),
            )
        )
        return True

    def labelled(self, name: str) -> dict[str, list[bytes]]:
        """The profile's images by their latest verdict: {"good": [...], "defect": [...]}, each image once and in
        one list only (the verdict given last on it)."""
        rows = latest_verdicts(history_engine(self.engine), self.profiles.get(name).uid)
        assert self.store is not None
        return {k: [self.store.get(sha) for _, sha, v in rows if v == k] for k in ("good", "defect")}

    def calibrate(self, name: str, false_alarm_rate: float = 0.01, forward: Forward = on_this_thread) -> dict[str, Any]:
        """Thresholds from what the station knows of this profile (`calibrated`), set on it."""
        det = forward(self.profiles.detector, name)
        references = self.banks.images(name)
        held = {sha256_of(data) for _, data in references}
        defects = [data for data in self.labelled(name)["defect"] if sha256_of(data) not in held]
        try:
            calibration = calibrated(det, references, defects, false_alarm_rate, forward)
        except Conflict as e:
            raise Conflict(f"profile {name!r}: {e}") from None
        forward(self.profiles.set_thresholds, name, Thresholds.from_calibration(calibration))
        return calibration


def calibrated(
    det: Detector,
    references: Sequence[tuple[str, bytes]],
    defects: Sequence[bytes],
    false_alarm_rate: float = 0.01,
    forward: Forward = on_this_thread,
) -> dict[str, Any]:
    """Thresholds for `det` from its good parts (`references`, source and bytes; the bank it holds is built from
    them) and parts marked defect. Normal scores are leave-one-out scores of the good parts. With defects, the F1-max
    threshold between the two (defects scored against the bank); else the false-alarm quantile, with the count it
    rests on.

    Every use of the model goes through `forward` one batch at a time (serve runs each on its forward thread between
    detections), and each leaves the detector on its own bank: a detection waits for one step of a calibration,
    never for all of it."""
    if not det.supports(REFERENCES):
        raise Conflict("an exported engine's thresholds are baked in: calibrate before `kanoclip export`")
    goods = [data for _, data in references]
    if len(goods) < 2:
        raise Conflict(f"{len(goods)} good part(s): calibration needs at least 2 (add references or mark results good)")
    size = det.batch_size
    parts = [part for i in range(0, len(goods), size) for part in forward(encode_each, det, goods[i : i + size])]
    scored = [forward(score_without, det, parts, i, good) for i, good in enumerate(goods)]
    normal_scores = np.asarray([score for score, _ in scored], dtype=np.float64)
    normal_maps = [anomaly_map for _, anomaly_map in scored]
    defect_scores = [
        p.pred_score for i in range(0, len(defects), size) for p in forward(det.predict_many, defects[i : i + size])
    ]
    if defect_scores:
        labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(defect_scores))]
        image = f1_max_threshold(labels, np.r_[normal_scores, defect_scores])
    else:
        image = false_alarm_threshold(normal_scores, false_alarm_rate)
    pixel = false_alarm_threshold(np.concatenate([m.ravel() for m in normal_maps]), false_alarm_rate, "pixels")
    pixel.images = len(normal_maps)
    return {
        "image_threshold": image.value,
        "pixel_threshold": pixel.value,
        "image": dataclasses.asdict(image),
        "pixel": dataclasses.asdict(pixel),
        "basis": forward(det.threshold_basis),
        "good_parts": len(goods),
        "defects": len(defect_scores),
        "leave_one_out": [
            {"source": source, "sha256": sha256_of(data), "score": float(score)}
            for (source, data), score in zip(references, normal_scores, strict=True)
        ],
    }


def latest_verdicts(engine: Engine, uid: str) -> list[tuple[int, str, str]]:
    """(result id, image sha256, verdict) of each image a profile (`uid`) was given a verdict on, as the verdict
    given last on that image says, in the order those verdicts were given."""
    f, r = db.feedback.c, db.results.c
    latest = select(func.max(f.id).label("last")).where(f.profile_uid == uid).group_by(f.result_id).subquery()
    query = (
        select(r.id, r.image_sha256, f.verdict)
        .join(latest, f.id == latest.c.last)
        .join(db.results, r.id == f.result_id)
        .order_by(f.id)
    )
    last: dict[str, tuple[int, str, str]] = {}
    with engine.connect() as c:
        for result_id, sha, verdict in c.execute(query):
            if sha is not None:
                last.pop(sha, None)
                last[sha] = (result_id, sha, verdict)
    return list(last.values())


def encode_each(det: Detector, goods: Sequence[bytes]) -> list[GoodParts]:
    """Each good part encoded alone (none skipped as already in the bank); the detector keeps its bank."""
    bank = det.references
    try:
        det.clear_references()
        return [det.encode_references([good]) for good in goods]
    finally:
        det.use_references(bank)


def score_without(det: Detector, parts: Sequence[GoodParts], i: int, good: bytes) -> tuple[float, NDArray[np.float32]]:
    """Good part `i` scored against a bank of all the other parts (built without the model); the detector keeps
    its bank."""
    bank = det.references
    others = ReferenceBank([], det.backend.reference_identity())  # type: ignore[attr-defined]
    for j, part in enumerate(parts):
        if j != i and part.sources:
            others = others.extended(part.levels, part.sources, det.config.reference_max_patches)
    try:
        det.use_references(others)
        p = det.predict_many([good])[0]
    finally:
        det.use_references(bank)
    if p.pred_score is None or p.anomaly_map is None:
        raise KanoclipError(p.error or "a good part could not be scored")
    return p.pred_score, p.anomaly_map
