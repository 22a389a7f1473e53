"""`/`: the offline web page (one static file, no third-party script); it asks for the key itself."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> str:
    return resources.files("kanoclip.station").joinpath("static/index.html").read_text()
