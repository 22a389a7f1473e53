"""Model versions over HTTP: `/v1/profiles/{name}/models` lists a profile's versions with their shadow evaluation
beside the current model's on the same rows; `.../models/{version}` adds the per-row scores; `.../promote` makes a
version current and `/v1/profiles/{name}/rollback` undoes the last promote. Both rebuild the profile's bank from its
stored good parts on the forward thread, between detections."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from kanoclip.station.app.profiles import described
from kanoclip.station.app.state import GUARDED, Served

router = APIRouter(dependencies=GUARDED)


@router.get("/v1/profiles/{name}/models")
async def list_models(name: str, state: Served) -> dict[str, Any]:
    p = state.station.profile(name)
    versions = await run_in_threadpool(state.station.versions.all, p)
    return {"profile": name, "current": p.model_version, "rollback": len(p.rollback), "versions": versions}


@router.get("/v1/profiles/{name}/models/{version}")
async def get_model(name: str, version: int, state: Served) -> dict[str, Any]:
    """One version, with its shadow rows: [result id, label (1 defect), its score, the current model's score]."""
    p = state.station.profile(name)
    return await run_in_threadpool(state.station.versions.get, p, version)


@router.post("/v1/profiles/{name}/models/{version}/promote")
async def promote(name: str, version: int, state: Served) -> dict[str, Any]:
    """Make the version the profile's model, with its calibrated thresholds; the next detection uses it."""
    state.station.profile(name)
    async with state.bank_lock:
        await state.batcher.exclusive(state.station.promote, name, version, state.config.keep_versions)
    return await described(state, name)


@router.post("/v1/profiles/{name}/rollback")
async def rollback(name: str, state: Served) -> dict[str, Any]:
    """Return to the model, version and thresholds the last promote replaced."""
    state.station.profile(name)
    async with state.bank_lock:
        await state.batcher.exclusive(state.station.rollback, name)
    return await described(state, name)
