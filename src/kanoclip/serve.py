"""`kanoclip serve`: the Detector behind HTTP (FastAPI + uvicorn), with micro-batching and an offline web page.

The model loads once. Concurrent requests queue their images; one worker takes up to `max_batch` of them (waiting
at most `max_wait_ms` after the first) and runs them as one forward pass, so clients share the GPU. Bad uploads get
400 (not an image) or 413 (too large), and the server keeps serving. With an API key, every /v1 call needs it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import errno
import secrets
import socket
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Request, Security, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from fastapi.security import APIKeyHeader
from numpy.typing import NDArray

from . import __version__
from ._files import npy_bytes
from .backends import REFERENCES
from .detection import Detector, Prediction
from .errors import ConfigError, ImageReadError, ImageTooLarge
from .guard import GuardedH11Protocol, RequestGuard
from .images import ImageLimits, decode, image_size
from .visualize import mask_image, overlay, to_png

if TYPE_CHECKING:
    import uvicorn

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's --api-key")


@dataclass
class ServeConfig:
    api_key: str | None = None
    allowed_hosts: tuple[str, ...] = ()  # Host names served besides loopback and the bound address
    max_request_bytes: int = 64 * 1024 * 1024  # a whole request, counted as it arrives
    max_request_pixels: int = 64_000_000  # all images of one request together, checked before decoding
    max_inflight_pixels: int = 256_000_000  # decoded and not yet answered, over all requests of the process
    pixel_wait_s: float = 30.0  # how long a request waits for the process's pixel budget before 503
    body_timeout_s: float = 60.0  # for a request's whole body
    max_reference_images: int = 1_000  # good parts in the bank
    max_reference_bytes: int = 1024 * 1024 * 1024  # the bank's features, after the coreset
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_upload_bytes: int = 20 * 1024 * 1024  # per file; pixels are bounded by the detector's decoder limits
    max_files: int = 64


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
    """Images from concurrent requests, run together: up to `max_batch`, waiting `max_wait_ms` after the first."""

    def __init__(self, detector: Detector, max_batch: int, max_wait_ms: float) -> None:
        self.detector, self.max_batch, self.max_wait = detector, max(1, max_batch), max_wait_ms / 1000
        self.queue: asyncio.Queue[tuple[NDArray[np.uint8], asyncio.Future[Any]]] = asyncio.Queue()
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
        """Run `work` on the forward thread, between batches: a reference update never meets a forward halfway."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, work, *args)

    async def submit(self, rgb: NDArray[np.uint8]) -> tuple[Prediction, int, dict[str, Any]]:
        """The image's prediction, how many images shared its forward pass, and which bank it was scored with."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put((rgb, future))
        result: tuple[Prediction, int, dict[str, Any]] = await future
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
            batch = [(rgb, future) for rgb, future in batch if not future.done()]  # a client that left: dropped
            if not batch:
                continue
            arrays = [rgb for rgb, _ in batch]
            try:
                results, bank = await loop.run_in_executor(self.executor, self._forward, arrays)
            except Exception as e:  # a failed forward fails its requests, never the server
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches += 1
            self.images += len(batch)
            for (_, future), prediction in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result((prediction, len(batch), bank))

    def _forward(self, arrays: list[NDArray[np.uint8]]) -> tuple[list[Prediction], dict[str, Any]]:
        """On the forward thread, where banks are swapped too: the predictions and the bank they were scored with."""
        bank = self.detector.references
        return self.detector.predict_many(arrays), {"images": bank.images if bank else 0, "id": bank and bank.id}


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


def create_app(detector: Detector, config: ServeConfig | None = None) -> FastAPI:
    """The service around one loaded Detector."""
    cfg = config or ServeConfig()
    batcher = MicroBatcher(detector, cfg.max_batch, cfg.max_wait_ms)
    limits = dataclasses.replace(detector.limits, max_bytes=cfg.max_upload_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="kanoclip",
        version=__version__,
        description="Zero-shot anomaly detection: POST images to /v1/detect; the web page is at /.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads its script from a CDN: blank offline, and third-party code beside the key
        redoc_url=None,
    )
    app.state.batcher = batcher
    app.add_middleware(
        RequestGuard,
        allowed_hosts=cfg.allowed_hosts,
        max_body_bytes=cfg.max_request_bytes,
        body_timeout=cfg.body_timeout_s,
    )

    def authorize(request: Request, key: Annotated[str | None, Security(API_KEY_HEADER)] = None) -> None:
        if cfg.api_key is None:
            return
        given = key or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not secrets.compare_digest(given.encode(), cfg.api_key.encode()):
            raise HTTPException(401, "missing or wrong API key (send it as the X-API-Key header)")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files("kanoclip").joinpath("static/index.html").read_text()

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        """Liveness, without the key: load balancers probe it."""
        return {"status": "ok"}

    @app.get("/v1/info", dependencies=[Depends(authorize)])
    async def info() -> dict[str, Any]:
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
            "threshold_warning": threshold_warning(),
            "resolution": detector.image_size,
            "device": str(detector.device),
            "max_batch": cfg.max_batch,
            "max_wait_ms": cfg.max_wait_ms,
            "max_upload_bytes": cfg.max_upload_bytes,
            "max_pixels": limits.max_pixels,
            "references": bank_info(),
        }

    def threshold_warning() -> str | None:
        """Thresholds set on another bank or text (the bank changed since): labels are flagged until recalibrated."""
        stale = detector.stale_thresholds()
        return f"labels may be wrong: the thresholds do not fit ({stale}); recalibrate" if stale else None

    def bank_info() -> dict[str, Any]:
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
    async def decoded(files: list[UploadFile]) -> AsyncIterator[list[tuple[bytes, NDArray[np.uint8]]]]:
        """Each upload's bytes and pixels, under the same limits and errors for detections and references: the
        request's pixels are counted from the headers against its budget, then held in the process's budget until
        the request is answered."""
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
            yield [(data, await run_in_threadpool(decode_upload, data, name, limits)) for name, data in uploads]

    @app.get("/v1/references", dependencies=[Depends(authorize)])
    async def list_references() -> dict[str, Any]:
        """The few-shot bank: how many good parts, their sha256, patches per level and memory."""
        return bank_info()

    @app.post("/v1/references", dependencies=[Depends(authorize)])
    async def add_references(files: Annotated[list[UploadFile], File()]) -> dict[str, Any]:
        """Add good parts to the bank (SPEC §9); later detections are scored against it. Images are encoded between
        forward batches; the coreset that keeps a full bank bounded runs beside the forward passes, and the new bank
        is swapped in whole, so a detection waits for at most the encoding, never the reduction. An image the bank
        already holds is not added again."""
        if not detector.supports(REFERENCES):
            raise HTTPException(409, "an exported engine's bank is baked in: export again with --reference")
        async with decoded(files) as uploads, bank_lock:
            held = detector.references.images if detector.references else 0
            if held + len(uploads) > cfg.max_reference_images:
                raise HTTPException(
                    413, f"the bank holds {held} of at most {cfg.max_reference_images} good parts; clear it first"
                )
            # sha256 of the files, as `kanoclip reference build` records them
            parts = await batcher.exclusive(detector.encode_references, [data for data, _ in uploads])
            bank = await run_in_threadpool(detector.extended_bank, parts)
            if bank.nbytes() > cfg.max_reference_bytes:
                raise HTTPException(
                    413, f"the bank would hold {bank.nbytes():,} bytes, over {cfg.max_reference_bytes:,}"
                )
            await batcher.exclusive(detector.use_references, bank)
        return bank_info()

    @app.delete("/v1/references", dependencies=[Depends(authorize)])
    async def clear_references() -> dict[str, Any]:
        """Empty the bank: back to zero-shot."""
        if not detector.supports(REFERENCES):
            raise HTTPException(409, "an exported engine's bank is baked in: export again without --reference")
        async with bank_lock:
            await batcher.exclusive(detector.clear_references)
        return bank_info()

    @app.post("/v1/detect", dependencies=[Depends(authorize)])
    async def detect(
        request: Request, files: Annotated[list[UploadFile], File()], return_map: bool = False
    ) -> dict[str, Any]:
        """Score each uploaded image; heatmap overlays as base64 PNG; raw maps (base64 .npy) with return_map. Work
        queued for a client that hung up is dropped."""
        start = time.perf_counter()
        async with decoded(files) as uploads:
            arrays = [rgb for _, rgb in uploads]
            decoded_at = time.perf_counter()
            outputs = await _unless_gone(request, [batcher.submit(a) for a in arrays])
            inferred = time.perf_counter()
            results = []
            for upload, rgb, (prediction, shared, bank) in zip(files, arrays, outputs, strict=True):
                name = upload.filename or "upload"
                result = await run_in_threadpool(_result, name, rgb, prediction, return_map, shared)
                results.append({**result, "references": bank})
        timing = {
            "decode_ms": 1000 * (decoded_at - start),
            "inference_ms": 1000 * (inferred - decoded_at),
            "total_ms": 1000 * (time.perf_counter() - start),
        }
        return {
            "results": results,
            "threshold": detector.thresholds.image_threshold,
            "threshold_warning": threshold_warning(),
            "timing": timing,
        }

    return app


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


def _result(name: str, rgb: NDArray[np.uint8], p: Prediction, return_map: bool, shared: int) -> dict[str, Any]:
    if p.error is not None or p.anomaly_map is None:  # a non-finite score or map: an error, never a label
        return {"filename": name, "error": p.error, "batched_with": shared}
    amap, mask = p.anomaly_map, p.pred_mask
    out: dict[str, Any] = {
        "filename": name,
        "width": int(rgb.shape[1]),
        "height": int(rgb.shape[0]),
        "score": p.pred_score,
        "overlay_png": base64.b64encode(to_png(overlay(rgb, amap, mask=mask))).decode(),
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


def make_server(detector: Detector, config: ServeConfig, **where: Any) -> uvicorn.Server:
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
    return uvicorn.Server(uvicorn.Config(create_app(detector, config), **settings))


def serve(detector: Detector, sock: socket.socket, config: ServeConfig) -> None:
    """Run on a socket from `listen` until interrupted; stale thresholds are refused at start."""
    detector.check_thresholds()  # later bank changes are flagged instead
    server = make_server(detector, config)
    host, port = sock.getsockname()[:2]
    print(
        f"kanoclip: listening on http://{host if ':' not in host else f'[{host}]'}:{port}/ (the web page)", flush=True
    )
    server.run(sockets=[sock])
