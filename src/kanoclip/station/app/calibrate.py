"""Calibration over HTTP: `/v1/profiles/{name}/calibrate`, thresholds from the profile's good parts (leave-one-out)
and its results marked defect, computed on the forward thread while no bank update runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
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
    async with state.bank_lock:
        calibration: dict[str, Any] = await state.batcher.exclusive(state.station.calibrate, name, rate)
    return calibration
