"""One result as every sink sends it (JSON): the same fields from `watch` and from `serve`.

    {"schema": "kanoclip.result/1", "profile": "bottle", "id": 812, "source": "cam_0812.png",
     "score": 0.91, "label": 1, "verdict": "defect", "threshold": 0.62, "time": "2026-12-04T08:15:02.120Z",
     "error": null, "frame_index": null, "frame_time": null, "defect_type": "crack", "defect_type_p": 0.71}

`label` is 0 (good), 1 (defect) or null (no threshold yet, or an error), `verdict` the same in words; `threshold` is
null when the sender does not know it (a watcher scoring through a server); `id` is the history's row;
`defect_type` is the likeliest type of a part judged defective ("unknown" when unsure), null otherwise.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from kanoclip.labels import Label
from kanoclip.station.results import Detection

SCHEMA = "kanoclip.result/1"


def message(profile: str, result: dict[str, Any], threshold: float | None = None) -> dict[str, Any]:
    """A result (a watcher's or serve's: id, source, score, label, error, frame fields) as the sinks send it."""
    label = result.get("label")
    return {
        "schema": SCHEMA,
        "profile": profile,
        "id": result.get("id"),
        "source": result.get("source"),
        "score": result.get("score"),
        "label": label,
        "verdict": None if label is None else Label(label).word,
        "threshold": threshold,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "error": result.get("error"),
        "frame_index": result.get("frame_index"),
        "frame_time": result.get("frame_time"),
        "defect_type": result.get("defect_type"),
        "defect_type_p": result.get("defect_type_p"),
    }


def result_fields(d: Detection) -> dict[str, Any]:
    """A recorded detection's fields that `message` reads (as a watcher reports them too)."""
    p = d.prediction
    return {
        "id": d.result_id,
        "source": d.source,
        "score": p.pred_score,
        "label": p.pred_label,
        "error": p.error,
        "frame_index": d.frame_index,
        "frame_time": d.frame_time,
        "defect_type": p.defect_type,
        "defect_type_p": p.defect_type_p,
    }
