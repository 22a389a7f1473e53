"""The history over HTTP: `/v1/results` (a page, or every matching row as CSV), one result with its files, and
verdicts on results; a "good" verdict also adds the image to the profile's bank, a later "defect" takes it out."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool

from kanoclip.labels import Label
from kanoclip.station.app.references import teach
from kanoclip.station.app.state import GUARDED, Served, detector_of
from kanoclip.station.db import check_profile_name
from kanoclip.station.results import history_csv, parse_time, public

router = APIRouter(dependencies=GUARDED)
ROW_ID_MAX = 2**63 - 1  # the largest id a 64-bit row id holds: past it, 422 rather than a database overflow (500)
RowId = Annotated[int, Path(ge=0, le=ROW_ID_MAX)]


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN or infinity: 422
    verdict: Literal["good", "defect", "ok", "ng", "normal", "anomalous"]  # good/defect; the rest: earlier words
    note: str | None = Field(default=None, max_length=2000)
    type: str | None = Field(default=None, max_length=100)  # with "defect": the image becomes an example of it


@router.get("/v1/results")
async def results(
    state: Served,
    profile: str | None = None,
    since: str | None = None,
    until: str | None = None,
    label: Annotated[int | None, Query(ge=0, le=1)] = None,
    limit: int = 100,
    cursor: Annotated[int | None, Query(ge=0, le=ROW_ID_MAX)] = None,
    format: str = "json",
) -> Any:
    """The history, newest first: `?profile=&since=&until=&label=&limit=&cursor=`; `format=csv` streams every
    matching row."""
    if profile is not None:
        check_profile_name(profile)
    if not 1 <= limit <= 1000:
        raise HTTPException(400, f"limit must be 1..1000, got {limit}")
    filters: dict[str, Any] = {
        "profile": profile,
        "since": parse_time(since),
        "until": parse_time(until),
        "label": label,
    }
    if format == "csv":
        return StreamingResponse(
            iterate_in_threadpool(history_csv(state.station.iter_results(**filters))),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="kanoclip-results.csv"'},
        )
    if format != "json":
        raise HTTPException(400, f"format is json or csv, got {format!r}")
    rows, next_cursor = await run_in_threadpool(state.station.results, **filters, limit=limit, cursor=cursor)
    return {"results": [public(r) for r in rows], "next_cursor": next_cursor}


@router.get("/v1/results/{result_id}")
async def result(result_id: RowId, state: Served, include_map: bool = True) -> dict[str, Any]:
    """One result with its feedback, its overlay (base64 PNG, at the image's size) and its map (base64 float16
    .npy, at the model's resolution)."""
    station = state.station
    row = await run_in_threadpool(station.result, result_id)
    out = {**public(row), "feedback": row["feedback"]}
    overlay_png = await run_in_threadpool(station.blob, row["overlay_sha256"])
    out["overlay_png"] = overlay_png and base64.b64encode(overlay_png).decode()
    if include_map:
        amap = await run_in_threadpool(station.blob, row["map_sha256"])
        out["map"] = amap and {"dtype": "float16", "npy_base64": base64.b64encode(amap).decode()}
    return out


@router.post("/v1/results/{result_id}/feedback")
async def feedback(result_id: RowId, body: FeedbackBody, state: Served) -> dict[str, Any]:
    """A verdict on a result, recorded with its bank change in one commit: "good" adds its image to the bank of the
    profile it was recorded under, "defect" takes it out; a later verdict replaces an earlier one."""
    verdict = Label.parse(body.verdict).word
    row = await run_in_threadpool(state.station.result, result_id)
    answer: dict[str, Any] = {"result": result_id, "verdict": verdict, "profile": row["profile"]}
    if body.type is not None:
        answer["type"] = body.type
    bank = await teach(state, result_id, verdict, body.note, row, body.type)
    if bank is not None:
        answer["references"] = bank
    await state.batcher.exclusive(state.station.changed_profiles)  # a typed example: the next detection types with it
    return answer


@router.get("/v1/profiles/{name}/defect-types")
async def defect_types(name: str, state: Served, since: str | None = None, until: str | None = None) -> dict[str, Any]:
    """The profile's anomalous results per defect type in the window (ISO 8601 `since`/`until`), most first, with
    each type's share and the cumulative share: a Pareto chart's bars and line. Types its typing names but that were
    not seen count 0."""
    detector = await detector_of(state, name)
    counts = await run_in_threadpool(state.station.defect_type_counts, name, parse_time(since), parse_time(until))
    known = detector.typer.types_for(detector.type_class) if detector.typer is not None else []
    counts |= {kind: 0 for kind in known if kind not in counts}
    total, running, rows = sum(counts.values()), 0, []
    for kind, n in counts.items():
        running += n
        rows.append(
            {
                "type": kind,
                "count": n,
                "share": n / total if total else 0.0,
                "cumulative": running / total if total else 0.0,
            }
        )
    return {"profile": name, "since": since, "until": until, "total": total, "types": rows}
