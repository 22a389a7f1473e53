"""Adapt jobs over HTTP: `POST /v1/profiles/{name}/adapt` starts one in a worker process (`202`, with its URL);
`/v1/jobs/{id}` shows its state, phase, progress and the tail of its log; `DELETE` cancels it. The job reads only
what the station holds (the profile's good parts and labelled history): a request names no file."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, field_validator

from kanoclip.data.synthesis import SYNTHESIZERS
from kanoclip.station.adapting import write_spec
from kanoclip.station.app.state import GUARDED, Served
from kanoclip.station.errors import Conflict

router = APIRouter(dependencies=GUARDED)


class AdaptBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN or infinity: 422
    max_steps: int | None = Field(default=None, ge=1, le=1_000_000)  # None: the paper's recipe (15 epochs)
    synth: list[str] = Field(default_factory=lambda: list(SYNTHESIZERS), min_length=1, max_length=len(SYNTHESIZERS))
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = Field(default=111, ge=0, le=2**31 - 1)

    @field_validator("synth")
    @classmethod
    def known(cls, kinds: list[str]) -> list[str]:
        unknown = sorted(set(kinds) - set(SYNTHESIZERS))
        if unknown:
            raise ValueError(f"unknown synthesizer(s) {unknown}: use {', '.join(SYNTHESIZERS)}")
        return kinds


def shown(job: dict[str, Any]) -> dict[str, Any]:
    """A job as the API shows it: with its progress (0..1 over the training steps, once known) and its URL."""
    steps = job.get("steps")
    done = job["state"] == "done"
    progress = 1.0 if done else (min(1.0, job["step"] / steps) if steps else 0.0)
    return {**job, "progress": progress, "url": f"/v1/jobs/{job['id']}"}


@router.post("/v1/profiles/{name}/adapt", status_code=202)
async def start_adapt(name: str, state: Served, body: AdaptBody | None = None) -> dict[str, Any]:
    """Adapt the profile's model to its good parts in a worker process; the new model becomes a version of the
    profile (`/v1/profiles/{name}/models`), measured on its labelled history, current only once promoted."""
    station, o = state.station, body or AdaptBody()
    p = station.profile(name)
    if p.engine != "torch":
        raise Conflict(f"profile {name!r} runs an exported engine ({p.engine}): adapt needs the torch engine")
    parts = await run_in_threadpool(station.reference_count, name)
    if parts < 2:
        raise Conflict(
            f"profile {name!r} has {parts} good part(s): adapt needs at least 2 (add references or mark results good)"
        )
    state.workers.check_room()
    settings = {
        "profile": name,
        "profile_uid": p.uid,
        **o.model_dump(),
        "keep_versions": state.config.keep_versions,
    }
    job_id = await run_in_threadpool(station.jobs.start, "adapt", name, p.uid, settings)
    folder = station.jobs.folders
    try:
        write_spec(folder.job(job_id), station.base, settings)
        state.workers.start(job_id, folder.root)  # on this (the event loop's) thread: see `workers`
    except BaseException as e:  # another request took the last slot meanwhile, or the process could not start
        await run_in_threadpool(station.jobs.end, job_id, "failed", f"could not start: {e}")
        raise
    return shown(await run_in_threadpool(station.jobs.get, job_id))


@router.get("/v1/jobs")
async def list_jobs(state: Served, profile: str | None = None) -> dict[str, Any]:
    return {"jobs": [shown(j) for j in await run_in_threadpool(state.station.jobs.all, profile)]}


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, state: Served) -> dict[str, Any]:
    return shown(await run_in_threadpool(state.station.jobs.get, job_id))


@router.delete("/v1/jobs/{job_id}")
async def cancel_job(job_id: str, state: Served) -> dict[str, Any]:
    """Cancel a running job: its worker stops (here at once; on another instance at its next heartbeat) and what it
    wrote is removed."""
    job = await run_in_threadpool(state.station.jobs.cancel, job_id)
    state.workers.stop(job_id)
    return shown(job)
