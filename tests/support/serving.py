"""Start the real kanoclip server (uvicorn) on 127.0.0.1 with an ephemeral port, in a thread, for tests."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from kanoclip.inference.detector import Detector
from kanoclip.station.serve import ServeConfig, make_server
from kanoclip.station.station import DEFAULT_PROFILE, Station
from tests.conftest import randomize_learnable, tiny_detector

_APPS: dict[str, object] = {}


def app_of(url: str) -> Any:
    """The ASGI app behind a running test server (its batcher counts what was computed)."""
    return _APPS[url]


@contextmanager
def running_server(served: Detector | Station, config: ServeConfig, default: str = DEFAULT_PROFILE) -> Iterator[str]:
    server = make_server(served, config, default, host="127.0.0.1", port=0, log_level="warning")  # as `kanoclip serve`
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    _APPS[url] = server.config.app
    try:
        yield url
    finally:
        _APPS.pop(url, None)
        server.should_exit = True
        thread.join(timeout=10)


TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]


@contextmanager
def serve_process(*args: str, timeout: float = 120) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`kanoclip serve` in its own process on 127.0.0.1 at a free port: the process and its URL once it answers
    /v1/health; terminated (killed past 30 s) at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kanoclip", "serve", "--port", "0", *TINY_FLAGS, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        url = None
        while url is None:
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"kanoclip serve did not start (exit {proc.poll()})")
            found = re.search(r"listening on (http://[\d.]+:\d+)", line)
            url = found.group(1) if found else None
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def chromium() -> Any:
    """Debian's headless chromium under chromium-driver (installed by .ci/run), with no background networking."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    assert driver_path is not None, "chromedriver not found: .ci/run installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,1400",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


# shared by the serve tests of more than one tier
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def detector() -> Detector:
    d = tiny_detector()
    randomize_learnable(d.model)
    return d


def bilevel_png(width: int, height: int) -> bytes:
    """A few kilobytes that decode to width x height pixels: 1-bit, all black."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()
