"""Calibration over HTTP: `/v1/profiles/{name}/calibrate`, thresholds from the profile's good parts (leave-one-out)
and its results marked defect, while no bank update runs. Its model work goes to the forward thread one batch at a
time, between detections: a detection on any profile waits for one step of it, not for all of it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from kanoclip.station.app.state import GUARDED, Served

router = APIRouter(dependencies=GUARDED)


class CalibrateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN or infinity: 422
    false_alarm_rate: float = Field(default=0.01, gt=0, lt=1)


@router.post("/v1/profiles/{name}/calibrate")
async def calibrate(name: str, state: Served, body: CalibrateBody | None = None) -> dict[str, Any]:
    """Thresholds from the profile's good parts (leave-one-out) and the results marked defect."""
    state.station.profile(name)
    rate = (body or CalibrateBody()).false_alarm_rate
    loop = asyncio.get_running_loop()

    def forward(work: Callable[..., Any], *args: Any) -> Any:  # from calibrate's worker thread, one step at a time
        return asyncio.run_coroutine_threadsafe(state.batcher.exclusive(work, *args), loop).result()

    async with state.bank_lock:
        calibration: dict[str, Any] = await run_in_threadpool(state.station.calibrate, name, rate, forward)
    return calibration
