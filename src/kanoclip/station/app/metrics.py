"""`/metrics`: the app's own Prometheus registry (`telemetry.ServeMetrics`), behind the key like the API."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from kanoclip.station.app.state import GUARDED, Served

router = APIRouter(dependencies=GUARDED)


@router.get("/metrics", include_in_schema=False)
async def prometheus(state: Served) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
