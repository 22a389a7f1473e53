"""The history: every result, its files, and the pages, rows and CSV it is read back as.

The rule: a result is recorded only with its files. Each image, overlay and map goes into the store first; then all
rows of one request are committed in one transaction, together with the claims they complete, so a row never names
a missing file and a claimed file is done exactly when its result exists; a detection whose claim its holder no
longer holds records no row (`Detection.lost`). A row records the bank and thresholds its forward pass used
(`scored_with`, captured with the prediction), not those in effect when it is written. A full disk records nothing
(`DiskFull`).
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.exc import OperationalError

from kanoclip._files import npy_bytes, spreadsheet_safe
from kanoclip.data.images import to_png
from kanoclip.errors import ConfigError
from kanoclip.inference.detector import Detector, Prediction
from kanoclip.station import db
from kanoclip.station.claims import complete
from kanoclip.station.errors import NotFound, history_engine
from kanoclip.station.store import BlobStore, DiskFull

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
    "defect_type",  # judged anomalous: its likeliest type or "unknown"; empty for a normal one
    "defect_type_p",
)


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
    holder: str | None = None  # who claimed it: the claim is completed only while this holder still holds it
    used: dict[str, Any] | None = None  # `scored_with` the detector at its forward pass (None: as it is at record)
    lost: bool = False  # set by `record`: the claim was taken over or released, so no row was recorded
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


class Results:
    """The results table and the store's files of a station (nothing is kept without a database)."""

    def __init__(self, engine: Engine | None, store: BlobStore | None, instance: str) -> None:
        self.engine, self.store, self.instance = engine, store, instance

    def record(self, name: str, det: Detector, detections: Sequence[Detection], latency_ms: float) -> None:
        """Each detection, scored by `det`, as a row: its files into the store first, then all rows of the request
        in one transaction. Sets `result_id`, or `lost` for a claimed detection whose holder no longer holds its
        claim (no row: another holder records it); when this returns, the rows are committed and the files on
        disk."""
        if self.engine is None or self.store is None:
            return
        now = time.time()
        shared = {"created_at": now, "profile": name, "latency_ms": latency_ms, "instance": self.instance}
        at_record = scored_with(det)
        rows = [{**shared, **(d.used or at_record), **self._stored(d, det)} for d in detections]
        try:
            with self.engine.begin() as c:
                ids: list[int | None] = []
                for d, row in zip(detections, rows, strict=True):
                    result_id = int(c.execute(insert(db.results).values(**row)).inserted_primary_key[0])  # type: ignore[index]
                    if d.key is not None and not complete(c, d.key, d.holder, result_id):
                        c.execute(delete(db.results).where(db.results.c.id == result_id))  # a lost race: no row
                        ids.append(None)
                    else:
                        ids.append(result_id)
        except OperationalError as e:
            if "full" in str(e.orig).lower() or "no space" in str(e.orig).lower():  # SQLITE_FULL, PostgreSQL's ENOSPC
                raise DiskFull(f"the database's disk is full: nothing was recorded ({e.orig})") from e
            raise
        for d, recorded in zip(detections, ids, strict=True):
            d.result_id, d.lost = recorded, recorded is None

    def _stored(self, d: Detection, det: Detector) -> dict[str, Any]:
        """The detection's own columns, once its image, overlay and map are in the store (sets `overlay_png`)."""
        assert self.store is not None
        p = d.prediction
        files = artifacts(d.rgb, p, det) if p.error is None else None
        image_sha = self.store.put(d.data) if d.data else None  # no bytes: nothing that decoded as an image
        overlay_sha = map_sha = None
        stored = len(d.data)
        if files is not None:
            d.overlay_png = files[0]
            overlay_sha, map_sha = self.store.put(files[0]), self.store.put(files[1])
            stored += len(files[0]) + len(files[1])
        return {
            "source": d.source,
            "image_sha256": image_sha,
            "overlay_sha256": overlay_sha,
            "map_sha256": map_sha,
            "stored_bytes": stored,
            "score": p.pred_score,
            "label": p.pred_label,
            "error": p.error,
            "frame_index": d.frame_index,
            "frame_time": d.frame_time,
            "defect_type": p.defect_type,
            "defect_type_p": p.defect_type_p,
        }

    def page(
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
        engine = history_engine(self.engine)
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

    def iter_rows(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every matching row, newest first, a page at a time (memory holds one page)."""
        cursor = None
        while True:
            rows, cursor = self.page(**filters, limit=1000, cursor=cursor)
            yield from rows
            if cursor is None:
                return

    def get(self, result_id: int) -> dict[str, Any]:
        """One row with its verdicts, oldest first."""
        with history_engine(self.engine).connect() as c:
            row = c.execute(select(db.results).where(db.results.c.id == result_id)).first()
            if row is None:
                raise NotFound(f"no result {result_id}")
            verdicts = c.execute(
                select(db.feedback).where(db.feedback.c.result_id == result_id).order_by(db.feedback.c.id)
            )
            out = dict(row._mapping)
            shown = ("verdict", "defect_type", "note", "created_at")
            out["feedback"] = [{k: f._mapping[k] for k in shown} for f in verdicts]
        return out

    def type_counts(self, profile: str, since: float | None, until: float | None) -> dict[str, int]:
        """Results of the profile typed (judged anomalous), counted per type, most first."""
        r = db.results.c
        query = select(r.defect_type, func.count()).where(r.profile == profile, r.defect_type.is_not(None))
        if since is not None:
            query = query.where(r.created_at >= since)
        if until is not None:
            query = query.where(r.created_at < until)
        with history_engine(self.engine).connect() as c:
            counts = {kind: int(n) for kind, n in c.execute(query.group_by(r.defect_type))}
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def blob(self, sha256: str | None) -> bytes | None:
        return None if sha256 is None or self.store is None else self.store.get(sha256)


def scored_with(det: Detector) -> dict[str, Any]:
    """The thresholds, bank and model `det` scores with now: taken with the forward pass (`Detection.used`), since a
    calibrate or a verdict may change them before the row is written."""
    described = det.describe()
    t = det.thresholds
    return {
        "image_threshold": t.image_threshold,
        "pixel_threshold": t.pixel_threshold,
        "threshold_basis": t.basis,
        "threshold_stale": det.stale_thresholds(),
        "bank_id": det.references.id if det.references else None,
        "backbone_fingerprint": described["backbone_fingerprint"],
        "checkpoint_sha256": described["checkpoint_sha256"],
        "engine": described["engine"],
        "precision": described["precision"],
    }


_BASIC = re.compile(
    r"(?P<date>\d{4})(?P<m>\d{2})(?P<d>\d{2})(?:T(?P<H>\d{2})(?P<M>\d{2})?(?P<S>\d{2})?(?P<f>[.,]\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?"
)


def parse_time(value: str | None) -> float | None:
    """An ISO 8601 date or time, basic (20261201T0800Z) or extended (2026-12-01T08:00Z), UTC unless it says
    otherwise; None stays None. Anything else is refused: `20261201` once read as seconds since 1970."""
    if value is None or value == "":
        return None
    text = value.strip()
    basic = _BASIC.fullmatch(text)
    if basic:  # to the extended form, which fromisoformat reads on every supported Python
        g = basic.groupdict()
        clock = ":".join(x for x in (g["H"], g["M"], g["S"]) if x) + (g["f"] or "").replace(",", ".")
        zone = g["tz"] or ""
        if zone and zone != "Z" and ":" not in zone and len(zone) == 5:
            zone = f"{zone[:3]}:{zone[3:]}"
        text = f"{g['date']}-{g['m']}-{g['d']}" + (f"T{clock if g['M'] else clock + ':00'}" if g["H"] else "") + zone
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ][\d:.,]+)?(Z|[+-]\d{2}(:?\d{2})?)?", text):
            raise ValueError(text)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace(",", "."))
    except ValueError:
        raise ConfigError(
            f"{value!r} is not an ISO 8601 date or time: give e.g. 2026-12-01, 2026-12-01T08:00Z or 20261201T0800Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A result row as the API and the CSV show it: its time in ISO 8601."""
    out = {k: row.get(k) for k in HISTORY_COLUMNS if k != "time"}
    out["time"] = iso(row["created_at"])
    out["threshold_basis"] = row.get("threshold_basis")
    return out


def history_csv(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """The history as CSV, a row at a time (the columns of HISTORY_COLUMNS)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HISTORY_COLUMNS)
    for row in rows:
        shown = public(row)
        writer.writerow(["" if shown[k] is None else spreadsheet_safe(shown[k]) for k in HISTORY_COLUMNS])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
