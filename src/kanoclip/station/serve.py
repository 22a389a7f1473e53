"""`kanoclip serve`: the Detector behind HTTP (FastAPI + uvicorn), with micro-batching and an offline web page.

The model loads once. Concurrent requests queue their images; one worker takes up to `max_batch` of them (waiting
at most `max_wait_ms` after the first) and runs them as one forward pass, so clients share the GPU. Bad uploads get
400 (not an image) or 413 (too large), and the server keeps serving. With an API key, every /v1 call needs it.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import dataclasses
import errno
import io
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, Security, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader
from numpy.typing import NDArray
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool

from kanoclip._files import npy_bytes
from kanoclip._version import __version__
from kanoclip.data.images import ImageLimits, decode, image_size, to_png
from kanoclip.errors import ConfigError, ImageReadError, ImageTooLarge
from kanoclip.inference.backends import REFERENCES
from kanoclip.inference.detector import Detector, Prediction
from kanoclip.inference.overlays import mask_image
from kanoclip.station.config import ServeConfig
from kanoclip.station.db import check_profile_name
from kanoclip.station.guard import GuardedH11Protocol, RequestGuard
from kanoclip.station.station import (
    DEFAULT_PROFILE,
    HISTORY_COLUMNS,
    Conflict,
    Detection,
    NotFound,
    Station,
    parse_time,
    public,
)
from kanoclip.station.store import DiskFull
from kanoclip.station.telemetry import CountRequests, ServeMetrics

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("kanoclip.serve")
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's --api-key")


class PixelBudget:
    """Pixels decoded and not yet answered, over every request of the process: past the limit a request waits its
    turn (at most `wait` seconds, then 503), so concurrent requests cannot add up past what memory holds."""

    def __init__(self, limit: int, wait: float) -> None:
        self.limit, self.wait, self.used = limit, wait, 0
        self.changed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.used + pixels <= self.limit), self.wait)
            except asyncio.TimeoutError:
                raise HTTPException(503, "the server is decoding as many pixels as it may: try again shortly") from None
            self.used += pixels
        try:
            yield
        finally:
            async with self.changed:
                self.used -= pixels
                self.changed.notify_all()


class MicroBatcher:
    """Images from concurrent requests, run together: up to `max_batch`, waiting `max_wait_ms` after the first. A
    batch of several profiles runs as one forward pass per profile, each with its own text and bank."""

    def __init__(self, station: Station, max_batch: int, max_wait_ms: float, metrics: ServeMetrics) -> None:
        self.station, self.max_batch, self.max_wait = station, max(1, max_batch), max_wait_ms / 1000
        self.metrics = metrics
        self.queue: asyncio.Queue[tuple[str, NDArray[np.uint8], asyncio.Future[Any]]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kanoclip-forward")
        self.task: asyncio.Task[None] | None = None
        self.batches = 0
        self.images = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=False)

    async def exclusive(self, work: Any, *args: Any) -> Any:
        """Run `work` on the forward thread, between batches: a profile or bank update never meets a forward
        halfway, and detectors that share a model are conditioned there only."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, work, *args)

    async def submit(self, profile: str, rgb: NDArray[np.uint8]) -> Scored:
        """The image's prediction under the profile, with the detector and bank it was scored with."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put((profile, rgb, future))
        self.metrics.queue_depth.set(self.queue.qsize())
        result: Scored = await future
        return result

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            self.metrics.queue_depth.set(self.queue.qsize())
            batch = [item for item in batch if not item[2].done()]  # a client that left: dropped
            for profile in dict.fromkeys(name for name, _, _ in batch):
                group = [(rgb, future) for name, rgb, future in batch if name == profile]
                try:
                    scored = await loop.run_in_executor(self.executor, self._forward, profile, [g[0] for g in group])
                except Exception as e:  # a failed forward fails its requests, never the server
                    for _, future in group:
                        if not future.done():
                            future.set_exception(e)
                    continue
                self.batches += 1
                self.images += len(group)
                self.metrics.batch_size.observe(len(group))
                for (_, future), one in zip(group, scored, strict=True):
                    if not future.done():
                        future.set_result(one)

    def _forward(self, profile: str, arrays: list[NDArray[np.uint8]]) -> list[Scored]:
        """On the forward thread, where banks are swapped too: each prediction with what it was scored with."""
        detector = self.station.detector(profile)
        bank = detector.references
        used = {"images": bank.images if bank else 0, "id": bank and bank.id}
        predictions = detector.predict_many(arrays)
        return [Scored(p, len(arrays), used, detector) for p in predictions]


@dataclass
class Scored:
    prediction: Prediction
    batched_with: int
    references: dict[str, Any]
    detector: Detector


def decode_upload(data: bytes, name: str, limits: ImageLimits) -> NDArray[np.uint8]:
    """Bytes -> RGB through the one decoder: 413 over its limits, 400 for anything that is not an image."""
    if not data:
        raise HTTPException(400, f"{name}: empty upload")
    try:
        return decode(data, name, limits)
    except ImageTooLarge as e:
        raise HTTPException(413, str(e)) from None
    except ImageReadError as e:
        raise HTTPException(400, str(e)) from None


def create_app(
    station: Station | Detector, config: ServeConfig | None = None, default: str = DEFAULT_PROFILE
) -> FastAPI:
    """The service around a station (a bare Detector: a station that keeps nothing, with it as the default
    profile). `/v1/detect` and `/v1/references` act on the `default` profile, as before profiles existed."""
    cfg = config or ServeConfig()
    station = station if isinstance(station, Station) else Station.around(station, default)
    metrics = ServeMetrics()
    batcher = MicroBatcher(station, cfg.max_batch, cfg.max_wait_ms, metrics)
    limits = dataclasses.replace(ImageLimits(max_pixels=station.base.max_pixels), max_bytes=cfg.max_upload_bytes)

    async def follow_other_instances() -> None:
        """Profiles, banks and thresholds changed through another instance, reloaded here between batches."""
        while True:
            await asyncio.sleep(cfg.poll_s)
            try:
                await batcher.exclusive(station.changed_profiles)
            except Exception as e:  # an unreachable database for a moment: the next poll tries again
                log.warning("could not poll the database for profile changes: %s", e)

    async def prune_history() -> None:
        while True:
            try:
                removed = await run_in_threadpool(station.prune, cfg.keep_days, cfg.max_store_bytes)
                if removed:
                    log.info("retention: removed %d result(s)", removed)
            except Exception as e:
                log.warning("retention failed this time: %s", e)
            await asyncio.sleep(cfg.prune_every_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        tasks = [asyncio.create_task(follow_other_instances())] if station.keeps else []
        if station.keeps and (cfg.keep_days is not None or cfg.max_store_bytes is not None):
            tasks.append(asyncio.create_task(prune_history()))
        yield
        for task in tasks:
            task.cancel()
        await batcher.stop()

    app = FastAPI(
        title="kanoclip",
        version=__version__,
        description="Zero-shot anomaly detection: POST images to /v1/detect; the web page is at /.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads its script from a CDN: blank offline, and third-party code beside the key
        redoc_url=None,
    )
    app.state.batcher, app.state.station, app.state.metrics = batcher, station, metrics

    app.add_middleware(CountRequests, metrics=metrics)
    app.add_middleware(
        RequestGuard,
        allowed_hosts=cfg.allowed_hosts,
        max_body_bytes=cfg.max_request_bytes,
        body_timeout=cfg.body_timeout_s,
    )
    for kind, status in ((NotFound, 404), (Conflict, 409), (DiskFull, 507), (ConfigError, 400)):
        app.add_exception_handler(kind, _answer(status))

    def authorize(request: Request, key: Annotated[str | None, Security(API_KEY_HEADER)] = None) -> None:
        if cfg.api_key is None:
            return
        given = key or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not secrets.compare_digest(given.encode(), cfg.api_key.encode()):
            raise HTTPException(401, "missing or wrong API key (send it as the X-API-Key header)")

    guarded = [Depends(authorize)]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files("kanoclip.station").joinpath("static/index.html").read_text()

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        """Liveness, without the key: load balancers probe it."""
        return {"status": "ok"}

    @app.get("/metrics", dependencies=guarded, include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def detector_of(name: str) -> Detector:
        station.profile(name)  # 400/404 before the forward thread is asked
        detector: Detector = await batcher.exclusive(station.detector, name)
        return detector

    @app.get("/v1/info", dependencies=guarded)
    async def info() -> dict[str, Any]:
        detector = await detector_of(default)
        described = detector.describe()
        return {
            "version": __version__,
            "backbone": described["model"],
            "engine": described["engine"],
            "random_weights": described["random_weights"],
            "checkpoint": described["checkpoint"],
            "checkpoint_sha256": described["checkpoint_sha256"],
            "mode": "checkpoint" if described["checkpoint"] else "training-free",
            "threshold": detector.thresholds.image_threshold,
            "map_threshold": detector.thresholds.pixel_threshold,
            "threshold_warning": threshold_warning(detector),
            "resolution": detector.image_size,
            "device": str(detector.device),
            "max_batch": cfg.max_batch,
            "max_wait_ms": cfg.max_wait_ms,
            "max_upload_bytes": cfg.max_upload_bytes,
            "max_pixels": limits.max_pixels,
            "references": bank_info(detector),
            "profile": default,
            "profiles": sorted(station.profiles),
            "keeps_history": station.keeps,
        }

    def threshold_warning(detector: Detector) -> str | None:
        """Thresholds set on another bank or text (the bank changed since): labels are flagged until recalibrated."""
        stale = detector.stale_thresholds()
        return f"labels may be wrong: the thresholds do not fit ({stale}); recalibrate" if stale else None

    def bank_info(detector: Detector) -> dict[str, Any]:
        bank = detector.describe()["references"]
        empty: dict[str, Any] = {
            "id": None,
            "images": 0,
            "patches_per_level": 0,
            "reduced_from": 0,
            "bytes": 0,
            "sha256": [],
        }
        return {**(bank or empty), "limits": {"images": cfg.max_reference_images, "bytes": cfg.max_reference_bytes}}

    bank_lock = asyncio.Lock()  # one bank update at a time: a clear never lands between a reduction and its swap
    pixels = PixelBudget(cfg.max_inflight_pixels, cfg.pixel_wait_s)

    @asynccontextmanager
    async def decoded(files: list[UploadFile]) -> AsyncIterator[list[tuple[str, bytes, NDArray[np.uint8]]]]:
        """Each upload's name, bytes and pixels, under the same limits and errors for detections and references:
        the request's pixels are counted from the headers against its budget, then held in the process's budget
        until the request is answered."""
        if len(files) > cfg.max_files:
            raise HTTPException(413, f"{len(files)} files in one request; the limit is {cfg.max_files}")
        uploads, total = [], 0
        for upload in files:
            name = upload.filename or "upload"
            data = await upload.read(cfg.max_upload_bytes + 1)
            if len(data) > cfg.max_upload_bytes:
                raise HTTPException(413, f"{name}: {len(data):,} bytes is over the {cfg.max_upload_bytes:,}-byte limit")
            try:
                width, height = image_size(data, name) if data else (0, 0)
                limits.check_size(name, width, height)  # each image first: the same words as the command line
            except ImageTooLarge as e:
                raise HTTPException(413, str(e)) from None
            except ImageReadError as e:
                raise HTTPException(400, str(e)) from None
            total += width * height
            if total > cfg.max_request_pixels:
                raise HTTPException(
                    413, f"{name}: the request's images hold over its {cfg.max_request_pixels:,}-pixel budget"
                )
            uploads.append((name, data))
        async with pixels.hold(total):
            yield [(name, data, await run_in_threadpool(decode_upload, data, name, limits)) for name, data in uploads]

    async def add_good_parts(name: str, parts: list[tuple[str, bytes]]) -> dict[str, Any]:
        """Add good parts to a profile's bank (SPEC §9); later detections are scored against it. Images are encoded
        between forward batches; the coreset that keeps a full bank bounded runs beside the forward passes; the bank
        and its images are committed, then swapped in whole, so a detection waits for at most the encoding, never the
        reduction. An image the bank already holds is not added again."""
        detector = await detector_of(name)
        if not detector.supports(REFERENCES):
            raise HTTPException(409, "an exported engine's bank is baked in: export again with --reference")
        async with bank_lock:
            held = detector.references.images if detector.references else 0
            if held + len(parts) > cfg.max_reference_images:
                raise HTTPException(
                    413, f"the bank holds {held} of at most {cfg.max_reference_images} good parts; clear it first"
                )
            # sha256 of the files, as `kanoclip reference build` records them
            encoded = await batcher.exclusive(detector.encode_references, [data for _, data in parts])
            bank = await run_in_threadpool(detector.extended_bank, encoded)
            if bank.nbytes() > cfg.max_reference_bytes:
                raise HTTPException(
                    413, f"the bank would hold {bank.nbytes():,} bytes, over {cfg.max_reference_bytes:,}"
                )
            await run_in_threadpool(station.save_bank, name, bank, parts)
            await batcher.exclusive(detector.use_references, bank)
        return bank_info(detector)

    async def clear_good_parts(name: str) -> dict[str, Any]:
        detector = await detector_of(name)
        if not detector.supports(REFERENCES):
            raise HTTPException(409, "an exported engine's bank is baked in: export again without --reference")
        async with bank_lock:
            await run_in_threadpool(station.save_bank, name, None)
            await batcher.exclusive(detector.clear_references)
        return bank_info(detector)

    async def detect_on(
        name: str, request: Request, files: list[UploadFile], return_map: bool, source: Source | None = None
    ) -> dict[str, Any]:
        """Score each uploaded image with the profile's model, bank and thresholds, and record it: a 200 means its
        row is committed and its files are on disk (507 when the disk is full: nothing recorded, nothing labelled).
        Heatmap overlays as base64 PNG; raw maps (base64 .npy) with return_map. Work queued for a client that hung up
        is dropped."""
        start = time.perf_counter()
        station.profile(name)
        if source is not None and source.source_key is not None:
            if len(files) != 1:
                raise HTTPException(400, "source_key names one file: send one file per request")
            claimed = await run_in_threadpool(
                station.claim, name, source.source_key, files[0].filename or "upload", source.claim_timeout_s
            )
            if claimed == "busy":
                raise HTTPException(409, "another watcher is scoring this file now (its claim is fresh)")
            if claimed == "done":  # recorded before: the same answer, not a second row
                row = await run_in_threadpool(station.claimed_result, source.source_key)
                assert row is not None
                return {"profile": name, "duplicate": True, "results": [{**public(row), "result_id": row["id"]}]}
        async with decoded(files) as uploads:
            decoded_at = time.perf_counter()
            scored: list[Scored] = await _unless_gone(request, [batcher.submit(name, rgb) for _, _, rgb in uploads])
            inferred = time.perf_counter()
            detections = [
                Detection(filename, data, rgb, s.prediction)
                for (filename, data, rgb), s in zip(uploads, scored, strict=True)
            ]
            if source is not None:
                detections[0].key, detections[0].frame_index = source.source_key, source.frame_index
                detections[0].frame_time = source.frame_time
            detector = scored[0].detector
            await run_in_threadpool(station.record, name, detector, detections, 1000 * (inferred - start))
            for d in detections:
                metrics.observe_detection(name, d.prediction.pred_score, d.prediction.pred_label)
            results = [
                {
                    **await run_in_threadpool(_result, d, detector, return_map, s.batched_with),
                    "references": s.references,
                }
                for d, s in zip(detections, scored, strict=True)
            ]
        timing = {
            "decode_ms": 1000 * (decoded_at - start),
            "inference_ms": 1000 * (inferred - decoded_at),
            "total_ms": 1000 * (time.perf_counter() - start),
        }
        return {
            "profile": name,
            "results": results,
            "threshold": detector.thresholds.image_threshold,
            "threshold_warning": threshold_warning(detector),
            "timing": timing,
        }

    # -- the default profile, as before profiles ---------------------------------------------------------------------
    @app.get("/v1/references", dependencies=guarded)
    async def list_references() -> dict[str, Any]:
        """The default profile's few-shot bank: how many good parts, their sha256, patches per level and memory."""
        return bank_info(await detector_of(default))

    @app.post("/v1/references", dependencies=guarded)
    async def add_references(files: Annotated[list[UploadFile], File()]) -> dict[str, Any]:
        """Add good parts to the default profile's bank (see POST /v1/profiles/{name}/references)."""
        async with decoded(files) as uploads:
            return await add_good_parts(default, [(source, data) for source, data, _ in uploads])

    @app.delete("/v1/references", dependencies=guarded)
    async def clear_references() -> dict[str, Any]:
        """Empty the default profile's bank: back to zero-shot."""
        return await clear_good_parts(default)

    @app.post("/v1/detect", dependencies=guarded)
    async def detect(
        request: Request, files: Annotated[list[UploadFile], File()], return_map: bool = False
    ) -> dict[str, Any]:
        """Score images with the default profile (see POST /v1/profiles/{name}/detect)."""
        return await detect_on(default, request, files, return_map)

    # -- profiles ------------------------------------------------------------------------------------------------------
    @app.get("/v1/profiles", dependencies=guarded)
    async def list_profiles() -> dict[str, Any]:
        names = sorted(station.profiles)
        for n in names:
            await detector_of(n)  # staleness is the detector's: build each (once) on the forward thread
        described = [await run_in_threadpool(station.describe, n) for n in names]
        return {"default": default, "profiles": described}

    def trusted_model(body: ProfileBody, creating: bool) -> dict[str, Any]:
        """The fields a request sets. Its model (checkpoint, engine, exported folder) must be one a profile started
        from the command line already serves, whose model options it then takes; a new profile that names none
        takes the default profile's. A web request never makes the server load a file of its choosing."""
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

    @app.post("/v1/profiles", dependencies=guarded, status_code=201)
    async def create_profile(body: ProfileBody) -> dict[str, Any]:
        """A new profile: `{"name": "bottle-line-2", "class_name": "bottle"}`, on a model the server already serves."""
        fields = trusted_model(body, creating=True)
        name = fields.pop("name", None)
        if not name:
            raise HTTPException(400, "a profile needs a name")
        await batcher.exclusive(station.put_profile, name, fields, True)
        await detector_of(name)
        return await run_in_threadpool(station.describe, name)

    @app.get("/v1/profiles/{name}", dependencies=guarded)
    async def get_profile(name: str) -> dict[str, Any]:
        await detector_of(name)
        return await run_in_threadpool(station.describe, name)

    @app.patch("/v1/profiles/{name}", dependencies=guarded)
    async def change_profile(name: str, body: ProfileBody) -> dict[str, Any]:
        """Change a profile's class name (its thresholds become stale) or model (its bank is rebuilt from its
        stored good parts)."""
        fields = trusted_model(body, creating=False)
        if fields.pop("name", name) != name:
            raise HTTPException(400, "a profile's name cannot change: create another and delete this one")
        await batcher.exclusive(station.put_profile, name, fields, False)
        await detector_of(name)
        return await run_in_threadpool(station.describe, name)

    @app.delete("/v1/profiles/{name}", dependencies=guarded)
    async def delete_profile(name: str) -> dict[str, Any]:
        """Delete a profile (its history stays); the default profile cannot go."""
        if name == default:
            raise HTTPException(409, f"{name!r} is this server's default profile (--profile): it cannot be deleted")
        await batcher.exclusive(station.delete_profile, name)
        return {"deleted": name}

    @app.post("/v1/profiles/{name}/detect", dependencies=guarded)
    async def profile_detect(
        name: str,
        request: Request,
        files: Annotated[list[UploadFile], File()],
        source: Annotated[Source, Query()],
        return_map: bool = False,
    ) -> dict[str, Any]:
        """Score images with this profile. `source_key` (one file, from `kanoclip watch --server`) makes it
        exactly-once: a key already recorded answers its recorded result, a key another watcher holds 409."""
        return await detect_on(name, request, files, return_map, source)

    @app.post("/v1/events", dependencies=guarded)
    async def event(body: EventBody) -> dict[str, Any]:
        """Something a watcher saw that is not a result (a stream gap, an undelivered webhook), into the history."""
        if body.profile is not None:
            station.profile(body.profile)
        await run_in_threadpool(station.event, body.profile, body.source, body.kind, body.detail)
        return {"recorded": True}

    @app.get("/v1/events", dependencies=guarded)
    async def events(profile: str | None = None, limit: int = 100) -> dict[str, Any]:
        if profile is not None:
            check_profile_name(profile)
        return {"events": await run_in_threadpool(station.events, profile, min(max(limit, 1), 1000))}

    @app.get("/v1/profiles/{name}/references", dependencies=guarded)
    async def profile_references(name: str) -> dict[str, Any]:
        return bank_info(await detector_of(name))

    @app.post("/v1/profiles/{name}/references", dependencies=guarded)
    async def profile_add_references(name: str, files: Annotated[list[UploadFile], File()]) -> dict[str, Any]:
        station.profile(name)
        async with decoded(files) as uploads:
            return await add_good_parts(name, [(source, data) for source, data, _ in uploads])

    @app.delete("/v1/profiles/{name}/references", dependencies=guarded)
    async def profile_clear_references(name: str) -> dict[str, Any]:
        return await clear_good_parts(name)

    @app.post("/v1/profiles/{name}/calibrate", dependencies=guarded)
    async def calibrate(name: str, body: CalibrateBody | None = None) -> dict[str, Any]:
        """Thresholds from the profile's good parts (leave-one-out) and the results marked defect."""
        station.profile(name)
        rate = (body or CalibrateBody()).false_alarm_rate
        async with bank_lock:
            calibration: dict[str, Any] = await batcher.exclusive(station.calibrate, name, rate)
        return calibration

    # -- history -------------------------------------------------------------------------------------------------------
    @app.get("/v1/results", dependencies=guarded)
    async def results(
        profile: str | None = None,
        since: str | None = None,
        until: str | None = None,
        label: int | None = None,
        limit: int = 100,
        cursor: int | None = None,
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
                iterate_in_threadpool(history_csv(station.iter_results(**filters))),
                media_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="kanoclip-results.csv"'},
            )
        if format != "json":
            raise HTTPException(400, f"format is json or csv, got {format!r}")
        rows, next_cursor = await run_in_threadpool(station.results, **filters, limit=limit, cursor=cursor)
        return {"results": [public(r) for r in rows], "next_cursor": next_cursor}

    @app.get("/v1/results/{result_id}", dependencies=guarded)
    async def result(result_id: int, include_map: bool = True) -> dict[str, Any]:
        """One result with its feedback, its overlay (base64 PNG, at the image's size) and its map (base64 float16
        .npy, at the model's resolution)."""
        row = await run_in_threadpool(station.result, result_id)
        out = {**public(row), "feedback": row["feedback"]}
        overlay_png = await run_in_threadpool(station.blob, row["overlay_sha256"])
        out["overlay_png"] = overlay_png and base64.b64encode(overlay_png).decode()
        if include_map:
            amap = await run_in_threadpool(station.blob, row["map_sha256"])
            out["map"] = amap and {"dtype": "float16", "npy_base64": base64.b64encode(amap).decode()}
        return out

    @app.post("/v1/results/{result_id}/feedback", dependencies=guarded)
    async def feedback(result_id: int, body: FeedbackBody) -> dict[str, Any]:
        """A verdict on a result, recorded; "good" also adds its image to the profile's bank."""
        row = await run_in_threadpool(station.feedback, result_id, body.verdict, body.note)
        answer: dict[str, Any] = {"result": result_id, "verdict": body.verdict, "profile": row["profile"]}
        if body.verdict == "good" and row["profile"] in station.profiles and row["image_sha256"]:
            data = await run_in_threadpool(station.blob, row["image_sha256"])
            if data is not None and (await detector_of(row["profile"])).supports(REFERENCES):
                answer["references"] = await add_good_parts(row["profile"], [(row["source"], data)])
        return answer

    return app


class ProfileBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    class_name: str | None = Field(default=None, max_length=200)
    checkpoint: str | None = None
    engine: str | None = None
    exported: str | None = None


class Source(BaseModel):
    """Where an upload came from, when a watcher sends it: its claim key and frame."""

    source_key: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    claim_timeout_s: float = Field(default=300.0, gt=0)
    frame_index: int | None = Field(default=None, ge=0)
    frame_time: float | None = None


class EventBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    profile: str | None = None
    source: str = Field(max_length=2000)
    kind: Literal["stream_gap", "webhook_failed", "source_error", "never_completed"]
    detail: str = Field(default="", max_length=4000)


class CalibrateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    false_alarm_rate: float = Field(default=0.01, gt=0, lt=1)


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: Literal["good", "defect"]
    note: str | None = Field(default=None, max_length=2000)


def _answer(status: int) -> Any:
    async def handler(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status)

    return handler


def history_csv(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """The history as CSV, a row at a time (the columns of HISTORY_COLUMNS)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HISTORY_COLUMNS)
    for row in rows:
        shown = public(row)
        writer.writerow(["" if shown[k] is None else shown[k] for k in HISTORY_COLUMNS])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


async def _unless_gone(request: Request, waits: list[Any]) -> list[Any]:
    """The results of `waits`, or, once the client has disconnected, their cancellation: the batcher then drops the
    images still queued instead of computing answers nobody reads."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    gathered = asyncio.gather(*tasks)
    while True:
        done, _ = await asyncio.wait({gathered}, timeout=0.25)
        if done:
            return gathered.result()
        if await request.is_disconnected():
            gathered.cancel()
            raise HTTPException(499, "the client closed the request")


def _result(d: Detection, det: Detector, return_map: bool, shared: int) -> dict[str, Any]:
    p = d.prediction
    if p.error is not None or p.anomaly_map is None:  # a non-finite score or map: an error, never a label
        return {"filename": d.source, "error": p.error, "batched_with": shared, "result_id": d.result_id}
    amap, mask = p.anomaly_map, p.pred_mask
    overlay_png = d.overlay_png or to_png(det.paint(d.rgb, p))
    out: dict[str, Any] = {
        "filename": d.source,
        "result_id": d.result_id,
        "width": int(d.rgb.shape[1]),
        "height": int(d.rgb.shape[0]),
        "score": p.pred_score,
        "overlay_png": base64.b64encode(overlay_png).decode(),
        "overlay_scale": det.overlay_scale.to_dict(),
        "batched_with": shared,
    }
    if p.pred_label is not None:
        out["label"] = p.pred_label
    if mask is not None:
        out["mask_png"] = base64.b64encode(to_png(mask_image(mask))).decode()
    if return_map:
        out["map"] = {
            "dtype": "float32",
            "shape": list(amap.shape),
            "npy_base64": base64.b64encode(npy_bytes(amap.astype(np.float32))).decode(),
        }
    return out


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the URL is printed; a port in use is a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use: try another with --port") from e
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.listen(2048)
    return sock


def make_server(
    station: Station | Detector, config: ServeConfig, default: str = DEFAULT_PROFILE, **where: Any
) -> uvicorn.Server:
    """The uvicorn server every entry point runs (`where`: host and port, when no socket is given): idle keep-alive
    connections close after 5 s, half-sent requests after `HEADER_TIMEOUT`, and past `limit_concurrency`
    connections new ones get 503 instead of queueing without bound."""
    import uvicorn

    settings: dict[str, Any] = {
        "http": GuardedH11Protocol,
        "log_level": "info",
        "timeout_keep_alive": 5,
        "limit_concurrency": 256,
        "h11_max_incomplete_event_size": 64 * 1024,
        **where,
    }
    return uvicorn.Server(uvicorn.Config(create_app(station, config, default), **settings))


def serve(station: Station, sock: socket.socket, config: ServeConfig, default: str = DEFAULT_PROFILE) -> None:
    """Run on a socket from `listen` until interrupted."""
    server = make_server(station, config, default)
    host, port = sock.getsockname()[:2]
    print(
        f"kanoclip: listening on http://{host if ':' not in host else f'[{host}]'}:{port}/ (the web page)", flush=True
    )
    server.run(sockets=[sock])
