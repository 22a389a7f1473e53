"""Events over HTTP: `/v1/events`, what a watcher saw that is not a result (a stream gap, an undelivered webhook),
into the history and back; and `/v1/claims/release`, where a stopping `watch --server` gives up the claims its
holder id holds, so the next watcher takes those files at once."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from kanoclip.station.app.state import GUARDED, Served
from kanoclip.station.claims import HOLDER_PATTERN
from kanoclip.station.db import check_profile_name

router = APIRouter(dependencies=GUARDED)


class EventBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN or infinity: 422
    profile: str | None = None
    source: str = Field(max_length=2000)
    kind: Literal["stream_gap", "webhook_failed", "source_error", "never_completed", "opcua_failed", "mqtt_failed"]
    detail: str = Field(default="", max_length=4000)


@router.post("/v1/events")
async def event(body: EventBody, state: Served) -> dict[str, Any]:
    """Something a watcher saw that is not a result (a stream gap, an undelivered webhook), into the history."""
    if body.profile is not None:
        state.station.profile(body.profile)
    await run_in_threadpool(state.station.event, body.profile, body.source, body.kind, body.detail)
    return {"recorded": True}


@router.get("/v1/events")
async def events(state: Served, profile: str | None = None, limit: int = 100) -> dict[str, Any]:
    if profile is not None:
        check_profile_name(profile)
    return {"events": await run_in_threadpool(state.station.events, profile, min(max(limit, 1), 1000))}


class ReleaseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    holder: str = Field(pattern=HOLDER_PATTERN)


@router.post("/v1/claims/release")
async def release(body: ReleaseBody, state: Served) -> dict[str, Any]:
    """Give up every unfinished claim of a watcher's holder id (it is stopping): how many were released."""
    return {"released": await run_in_threadpool(state.station.release, body.holder)}
