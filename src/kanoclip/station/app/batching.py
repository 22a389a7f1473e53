"""The work a server shares between requests: the forward thread that batches images (`MicroBatcher`) and the
process's budget of decoded pixels (`PixelBudget`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import HTTPException
from numpy.typing import NDArray

from kanoclip.inference.detector import Detector, Prediction
from kanoclip.station.results import scored_with
from kanoclip.station.station import Station
from kanoclip.station.telemetry import ServeMetrics


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


@dataclass
class Scored:
    prediction: Prediction
    batched_with: int
    references: dict[str, Any]
    detector: Detector
    used: dict[str, Any]  # the thresholds, bank and model the pass scored with, read on the forward thread before it


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
        scored = scored_with(detector)  # before the pass: a calibrate queued after it cannot change what is recorded
        predictions = detector.predict_many(arrays)
        return [Scored(p, len(arrays), used, detector, scored) for p in predictions]
