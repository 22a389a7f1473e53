"""Profiles over HTTP: `/v1/profiles` and `/v1/profiles/{name}`.

A web request never makes the server load a file of its choosing: a profile's model (checkpoint, engine, exported
folder) must be one that a profile started from the command line already serves. The default profile cannot go.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from kanoclip.station.app.state import GUARDED, AppState, Served, detector_of
from kanoclip.station.station import Station

router = APIRouter(dependencies=GUARDED)


class ProfileBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN or infinity: 422
    name: str | None = None
    class_name: str | None = Field(default=None, max_length=200)
    checkpoint: str | None = None
    engine: str | None = None
    exported: str | None = None


def trusted_model(station: Station, default: str, body: ProfileBody, creating: bool) -> dict[str, Any]:
    """The fields a request sets. Its model must be one a profile already serves, whose model options it then
    takes; a new profile that names none takes the default profile's."""
    fields = body.model_dump(exclude_unset=True)
    named = {k: fields[k] for k in ("checkpoint", "engine", "exported") if k in fields}
    if not named and not creating:
        return fields
    wanted = {"checkpoint": None, "engine": "torch", "exported": None, **named}
    models = [p.model() for n, p in sorted(station.profiles.items(), key=lambda item: item[0] != default)]
    matching = [m for m in models if all(m[k] == wanted[k] for k in wanted)] if named else models[:1]
    if not matching:
        raise HTTPException(
            403,
            "a profile may use only a model that another profile already serves; start the server with "
            "`kanoclip serve --profile NAME --checkpoint ...` to add one",
        )
    return {**fields, **matching[0]}


async def described(state: AppState, name: str) -> dict[str, Any]:
    """The profile as the API shows it; staleness is its detector's, so that is built first (forward thread)."""
    await detector_of(state, name)
    return await run_in_threadpool(state.station.describe, name)


@router.get("/v1/profiles")
async def list_profiles(state: Served) -> dict[str, Any]:
    names = sorted(state.station.profiles)
    for n in names:
        await detector_of(state, n)  # staleness is the detector's: build each (once) on the forward thread
    profiles = [await run_in_threadpool(state.station.describe, n) for n in names]
    return {"default": state.default, "profiles": profiles}


@router.post("/v1/profiles", status_code=201)
async def create_profile(body: ProfileBody, state: Served) -> dict[str, Any]:
    """A new profile: `{"name": "bottle-line-2", "class_name": "bottle"}`, on a model the server already serves."""
    fields = trusted_model(state.station, state.default, body, creating=True)
    name = fields.pop("name", None)
    if not name:
        raise HTTPException(400, "a profile needs a name")
    cap = state.config.max_profiles
    if name not in state.station.profiles and len(state.station.profiles) >= cap:
        raise HTTPException(
            409, f"the station holds its {cap} profiles at most (--max-profiles): delete one, or start it with more"
        )
    await state.batcher.exclusive(state.station.put_profile, name, fields, True)
    return await described(state, name)


@router.get("/v1/profiles/{name}")
async def get_profile(name: str, state: Served) -> dict[str, Any]:
    return await described(state, name)


@router.patch("/v1/profiles/{name}")
async def change_profile(name: str, body: ProfileBody, state: Served) -> dict[str, Any]:
    """Change a profile's class name (its thresholds become stale) or model (its bank is rebuilt from its
    stored good parts)."""
    fields = trusted_model(state.station, state.default, body, creating=False)
    if fields.pop("name", name) != name:
        raise HTTPException(400, "a profile's name cannot change: create another and delete this one")
    await state.batcher.exclusive(state.station.put_profile, name, fields, False)
    return await described(state, name)


@router.delete("/v1/profiles/{name}")
async def delete_profile(name: str, state: Served) -> dict[str, Any]:
    """Delete a profile (its history stays); the default profile cannot go."""
    if name == state.default:
        raise HTTPException(409, f"{name!r} is this server's default profile (--profile): it cannot be deleted")
    await state.batcher.exclusive(state.station.delete_profile, name)
    state.metrics.forget_profile(name)
    return {"deleted": name}
