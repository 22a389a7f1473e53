"""What the server is: `/v1/health` (liveness, without the key: load balancers probe it) and `/v1/info` (its model,
default profile, limits and bank)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from kanoclip._version import __version__
from kanoclip.station.app.detect import threshold_warning
from kanoclip.station.app.references import bank_info
from kanoclip.station.app.state import GUARDED, Served, detector_of

router = APIRouter()


@router.get("/v1/health")
async def health() -> dict[str, Any]:
    """Liveness, without the key: load balancers probe it."""
    return {"status": "ok"}


@router.get("/v1/info", dependencies=GUARDED)
async def info(state: Served) -> dict[str, Any]:
    cfg, station = state.config, state.station
    detector = await detector_of(state, state.default)
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
        "max_pixels": state.limits.max_pixels,
        "references": bank_info(cfg, detector),
        "profile": state.default,
        "profiles": sorted(station.profiles),
        "keeps_history": station.keeps,
    }
