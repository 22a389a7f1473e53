"""What the routes share, and the dependencies that hand it to them: `create_app` puts it on `app.state` once;
a route asks for it (`Served`) instead of closing over it, so each router stands alone in its module."""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from kanoclip.data.images import ImageLimits
from kanoclip.inference.detector import Detector
from kanoclip.station.app.batching import MicroBatcher, PixelBudget
from kanoclip.station.app.workers import Workers
from kanoclip.station.config import ServeConfig
from kanoclip.station.sinks.fanout import Sinks
from kanoclip.station.station import Station
from kanoclip.station.telemetry import ServeMetrics

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's --api-key")


class AppState(Protocol):
    """`app.state` as `create_app` fills it (tests and tools read `station`, `batcher` and `metrics` there too)."""

    station: Station
    config: ServeConfig
    default: str  # the profile that /v1/detect and /v1/references act on, as before profiles existed
    metrics: ServeMetrics
    batcher: MicroBatcher
    limits: ImageLimits  # the decoder's limits for uploads
    bank_lock: asyncio.Lock  # one bank update at a time: a clear never lands between a reduction and its swap
    pixels: PixelBudget
    sinks: Sinks  # where each recorded result goes besides the history (--webhook, ...)
    workers: Workers  # the worker processes of this server's jobs (adapt)


def state_of(app: Any) -> AppState:
    """The app's shared state (Starlette's `State` holds any attribute; this is the typed view of it)."""
    state: AppState = app.state
    return state


def served(request: Request) -> AppState:
    return state_of(request.app)


Served = Annotated[AppState, Depends(served)]


def authorize(request: Request, key: Annotated[str | None, Security(API_KEY_HEADER)] = None) -> None:
    """With an API key, every call it guards needs it, as X-API-Key or a Bearer token (compared in constant time)."""
    api_key = served(request).config.api_key
    if api_key is None:
        return
    given = key or request.headers.get("authorization", "").removeprefix("Bearer ")
    if not secrets.compare_digest(given.encode(), api_key.encode()):
        raise HTTPException(401, "missing or wrong API key (send it as the X-API-Key header)")


GUARDED = [Depends(authorize)]


async def detector_of(state: AppState, name: str) -> Detector:
    """The profile's detector, built on the forward thread; an unknown or bad name is a 404/400 before that."""
    state.station.profile(name)
    detector: Detector = await state.batcher.exclusive(state.station.detector, name)
    return detector
