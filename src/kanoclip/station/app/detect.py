"""Scoring: `/v1/profiles/{name}/detect`, and `/v1/detect` for the default profile.

A 200 means each image's row is committed and its files are on disk (507 when the disk is full: nothing recorded,
nothing labelled). Work queued for a client that hung up is dropped. A watcher's `source_key` makes a request
exactly-once: a key already recorded answers its recorded result, a key another holder holds is 409, and so is one
taken over while this request scored it (nothing recorded). The claim is held by the request's `holder`: one id
per watcher process (a request without one is its own holder).
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from kanoclip._files import npy_bytes
from kanoclip.data.images import to_png
from kanoclip.inference.detector import Detector
from kanoclip.inference.overlays import mask_image
from kanoclip.station.app.batching import Scored
from kanoclip.station.app.state import GUARDED, AppState, Served
from kanoclip.station.app.uploads import decoded
from kanoclip.station.claims import HOLDER_PATTERN, new_holder
from kanoclip.station.results import Detection, public
from kanoclip.station.sinks.message import message, result_fields

router = APIRouter(dependencies=GUARDED)


class Source(BaseModel):
    """Where an upload came from, when a watcher sends it: its claim key and frame."""

    source_key: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    holder: str | None = Field(default=None, pattern=HOLDER_PATTERN)  # the watcher's id: who holds the claim
    claim_timeout_s: float = Field(default=300.0, gt=0)
    frame_index: int | None = Field(default=None, ge=0)
    frame_time: float | None = None


def threshold_warning(detector: Detector) -> str | None:
    """Thresholds set on another bank or text (the bank changed since): labels are flagged until recalibrated."""
    stale = detector.stale_thresholds()
    return f"labels may be wrong: the thresholds do not fit ({stale}); recalibrate" if stale else None


@router.post("/v1/profiles/{name}/detect")
async def profile_detect(
    name: str,
    request: Request,
    files: Annotated[list[UploadFile], File()],
    source: Annotated[Source, Query()],
    state: Served,
    return_map: bool = False,
) -> dict[str, Any]:
    """Score images with this profile. `source_key` (one file, from `kanoclip watch --server`) makes it
    exactly-once: a key already recorded answers its recorded result, a key another watcher holds 409."""
    return await detect_on(state, name, request, files, return_map, source)


@router.post("/v1/detect")
async def detect(
    request: Request, files: Annotated[list[UploadFile], File()], state: Served, return_map: bool = False
) -> dict[str, Any]:
    """Score images with the default profile (see POST /v1/profiles/{name}/detect)."""
    return await detect_on(state, state.default, request, files, return_map)


async def detect_on(
    state: AppState,
    name: str,
    request: Request,
    files: list[UploadFile],
    return_map: bool,
    source: Source | None = None,
) -> dict[str, Any]:
    """Score each uploaded image with the profile's model, bank and thresholds, and record it. Heatmap overlays as
    base64 PNG; raw maps (base64 .npy) with return_map."""
    start = time.perf_counter()
    station = state.station
    station.profile(name)
    holder = (source.holder if source is not None else None) or new_holder()
    if source is not None and source.source_key is not None:
        recorded = await _claimed(state, name, files, source.source_key, source.claim_timeout_s, holder)
        if recorded is not None:
            return recorded
    async with decoded(state, files) as uploads:
        decoded_at = time.perf_counter()
        scored: list[Scored] = await _unless_gone(request, [state.batcher.submit(name, rgb) for _, _, rgb in uploads])
        inferred = time.perf_counter()
        detections = [
            Detection(filename, data, rgb, s.prediction, used=s.used)
            for (filename, data, rgb), s in zip(uploads, scored, strict=True)
        ]
        if source is not None:
            detections[0].key, detections[0].frame_index = source.source_key, source.frame_index
            detections[0].frame_time, detections[0].holder = source.frame_time, holder
        detector = scored[0].detector
        await run_in_threadpool(station.record, name, detector, detections, 1000 * (inferred - start))
        if detections[0].lost:
            raise HTTPException(409, "another watcher took this file over while it was scored: nothing recorded")
        threshold = detector.thresholds.image_threshold
        for d in detections:
            p = d.prediction
            state.metrics.observe_detection(name, p.pred_score, p.pred_label, p.defect_type)
            state.sinks.send(message(name, result_fields(d), threshold))
        results = [
            {**await run_in_threadpool(answer, d, detector, return_map, s.batched_with), "references": s.references}
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


async def _claimed(
    state: AppState, name: str, files: list[UploadFile], key: str, timeout_s: float, holder: str
) -> dict[str, Any] | None:
    """The claim on a watcher's file: None when this request is to score it, its recorded answer when it is done;
    409 while another watcher holds it."""
    if len(files) != 1:
        raise HTTPException(400, "source_key names one file: send one file per request")
    station = state.station
    claimed = await run_in_threadpool(station.claim, name, key, files[0].filename or "upload", timeout_s, holder)
    if claimed == "busy":
        raise HTTPException(409, "another watcher is scoring this file now (its claim is fresh)")
    if claimed == "mine":
        return None
    row = await run_in_threadpool(station.claimed_result, key)  # recorded before: the same answer, not a second row
    assert row is not None
    return {"profile": name, "duplicate": True, "results": [{**public(row), "result_id": row["id"]}]}


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


def answer(d: Detection, det: Detector, return_map: bool, shared: int) -> dict[str, Any]:
    """One image's answer: its score and label, overlay and mask as base64 PNG, and (`return_map`) its raw map."""
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
        out["defect_type"], out["defect_type_p"] = p.defect_type, p.defect_type_p  # None for a normal image
    if mask is not None:
        out["mask_png"] = base64.b64encode(to_png(mask_image(mask))).decode()
    if return_map:
        out["map"] = {
            "dtype": "float32",
            "shape": list(amap.shape),
            "npy_base64": base64.b64encode(npy_bytes(amap.astype(np.float32))).decode(),
        }
    return out
