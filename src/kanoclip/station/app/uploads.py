"""Uploads into pixels, under the same limits and errors for detections and references: file count and bytes, each
image's size from its header, the request's pixel budget, then the process's (`PixelBudget`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
from fastapi import HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from numpy.typing import NDArray

from kanoclip.data.images import ImageLimits, decode, image_size
from kanoclip.errors import ImageReadError, ImageTooLarge
from kanoclip.station.app.state import AppState


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


@asynccontextmanager
async def decoded(
    state: AppState, files: list[UploadFile]
) -> AsyncIterator[list[tuple[str, bytes, NDArray[np.uint8]]]]:
    """Each upload's name, bytes and pixels: the request's pixels are counted from the headers against its budget,
    then held in the process's budget until the request is answered."""
    cfg, limits = state.config, state.limits
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
    async with state.pixels.hold(total):
        yield [(name, data, await run_in_threadpool(decode_upload, data, name, limits)) for name, data in uploads]
