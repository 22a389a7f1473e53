"""`create_app`: the station behind HTTP (FastAPI), with micro-batching and an offline web page.

The model loads once. Concurrent requests queue their images; one worker takes up to `max_batch` of them (waiting
at most `max_wait_ms` after the first) and runs them as one forward pass, so clients share the GPU. Bad uploads get
400 (not an image) or 413 (too large), and the server keeps serving. With an API key, every /v1 call needs it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from kanoclip._version import __version__
from kanoclip.data.images import ImageLimits
from kanoclip.errors import ConfigError
from kanoclip.inference.detector import Detector
from kanoclip.station.app import (
    calibrate,
    detect,
    events,
    info,
    jobs,
    metrics,
    models,
    page,
    profiles,
    references,
    results,
)
from kanoclip.station.app.batching import MicroBatcher, PixelBudget
from kanoclip.station.app.state import AppState, state_of
from kanoclip.station.app.workers import Workers
from kanoclip.station.config import ServeConfig
from kanoclip.station.guard import RequestGuard
from kanoclip.station.sinks.fanout import Sinks
from kanoclip.station.station import DEFAULT_PROFILE, Conflict, NotFound, Station
from kanoclip.station.store import DiskFull
from kanoclip.station.telemetry import CountRequests, ServeMetrics

log = logging.getLogger("kanoclip.serve")
ORPHAN_POLL_S = 30.0
ROUTERS = (page, info, metrics, detect, references, profiles, calibrate, events, results, jobs, models)


def create_app(
    station: Station | Detector, config: ServeConfig | None = None, default: str = DEFAULT_PROFILE
) -> FastAPI:
    """The service around a station (a bare Detector: a station that keeps nothing, with it as the default
    profile). `/v1/detect` and `/v1/references` act on the `default` profile, as before profiles existed."""
    cfg = config or ServeConfig()
    station = station if isinstance(station, Station) else Station.around(station, default)
    app = FastAPI(
        title="kanoclip",
        version=__version__,
        description="Zero-shot anomaly detection: POST images to /v1/detect; the web page is at /.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads its script from a CDN: blank offline, and third-party code beside the key
        redoc_url=None,
    )
    shared = state_of(app)
    shared.station, shared.config, shared.default = station, cfg, default
    shared.metrics = ServeMetrics()
    shared.batcher = MicroBatcher(station, cfg.max_batch, cfg.max_wait_ms, shared.metrics)
    shared.limits = dataclasses.replace(ImageLimits(max_pixels=station.base.max_pixels), max_bytes=cfg.max_upload_bytes)
    shared.bank_lock = asyncio.Lock()
    shared.pixels = PixelBudget(cfg.max_inflight_pixels, cfg.pixel_wait_s)
    shared.workers = Workers(station, cfg.max_jobs)
    shared.sinks = Sinks.open(
        cfg.sinks,
        lambda m, kind, why: station.event(m.get("profile"), str(m.get("source")), kind, why),
        station.engine,
    )

    app.add_middleware(CountRequests, metrics=shared.metrics)
    app.add_middleware(
        RequestGuard,
        allowed_hosts=cfg.allowed_hosts,
        max_body_bytes=cfg.max_request_bytes,
        body_timeout=cfg.body_timeout_s,
    )
    for kind, status in ((NotFound, 404), (Conflict, 409), (DiskFull, 507), (ConfigError, 400)):
        app.add_exception_handler(kind, _answer(status))
    app.add_exception_handler(RequestValidationError, _invalid)
    for module in ROUTERS:
        app.include_router(module.router)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The forward thread, and with a database: the poll for other instances' changes and retention."""
    shared = state_of(app)
    station, cfg = shared.station, shared.config
    shared.batcher.start()
    tasks = [asyncio.create_task(_follow_other_instances(shared))] if station.keeps else []
    if station.keeps:
        tasks.append(asyncio.create_task(_sweep_store(station)))
        tasks.append(asyncio.create_task(_fail_orphan_jobs(station)))
    if station.keeps and (cfg.keep_days is not None or cfg.max_store_bytes is not None):
        tasks.append(asyncio.create_task(_prune_history(station, cfg)))
    yield
    for task in tasks:
        task.cancel()
    await shared.workers.close()
    await shared.batcher.stop()
    await run_in_threadpool(shared.sinks.close)  # what is queued is delivered (each sink for at most 10 s)


async def _follow_other_instances(shared: AppState) -> None:
    """Profiles, banks and thresholds changed through another instance, reloaded here between batches."""
    while True:
        await asyncio.sleep(shared.config.poll_s)
        try:
            await shared.batcher.exclusive(shared.station.changed_profiles)
        except Exception as e:  # an unreachable database for a moment: the next poll tries again
            log.warning("could not poll the database for profile changes: %s", e)


async def _sweep_store(station: Station) -> None:
    """Once at start, beside the serving: the files an earlier process left unnamed (`Retention.sweep_store`)."""
    try:
        await run_in_threadpool(station.sweep_store)
    except Exception as e:
        log.warning("could not sweep the store for files nothing names: %s", e)


async def _fail_orphan_jobs(station: Station) -> None:
    """Jobs whose server is gone (killed, or silent on another machine), failed and cleaned: at start, then every
    `ORPHAN_POLL_S`; and once, what ended jobs left behind."""
    try:
        await run_in_threadpool(station.jobs.sweep)
    except Exception as e:
        log.warning("could not sweep what ended jobs left: %s", e)
    while True:
        try:
            for job_id in await run_in_threadpool(station.jobs.fail_orphans):
                log.warning("job %s failed: its server stopped during it", job_id)
        except Exception as e:
            log.warning("could not look for jobs whose server is gone: %s", e)
        await asyncio.sleep(ORPHAN_POLL_S)


async def _prune_history(station: Station, cfg: ServeConfig) -> None:
    while True:
        try:
            removed = await run_in_threadpool(station.prune, cfg.keep_days, cfg.max_store_bytes)
            if removed:
                log.info("retention: removed %d result(s)", removed)
        except Exception as e:
            log.warning("retention failed this time: %s", e)
        await asyncio.sleep(cfg.prune_every_s)


async def _invalid(request: Request, error: Exception) -> JSONResponse:
    """422 for a request that does not validate, without echoing its input: a NaN there cannot be written as JSON
    (FastAPI's own handler then failed with a 500)."""
    assert isinstance(error, RequestValidationError)
    detail = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in error.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


def _answer(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    """A station error as the API answers it: its message as `detail`, with its status."""

    async def handler(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status)

    return handler
