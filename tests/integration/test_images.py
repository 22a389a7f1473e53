"""The one decoder: every input kind, the same limits, and a decompression bomb refused before it is decoded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from kanoclip.station.serve import ServeConfig
from tests.conftest import tiny_detector
from tests.support.serving import running_server

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12000 x 12000 PNG (144 megapixels) of a few kilobytes: 1-bit, all black."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(path)
    assert path.stat().st_size < 100_000
    return path


def test_detect_refuses_a_144_megapixel_png_as_serve_does_within_bounded_memory(bomb: Path, tmp_path: Path) -> None:
    """It once peaked at 9.8 GB on the CLI; refused from the header now, with the server's 413 message."""
    code = (
        "import sys; from kanoclip.cli import main; rc = main(sys.argv[1:]); "  # VmHWM: this program's peak
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
        "print('peak_rss_kb', hwm); sys.exit(rc)"
    )
    args = ["detect", str(bomb), "--out", str(tmp_path / "out"), *TINY_FLAGS]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # "some images could not be read"
    peak_kb = int(done.stdout.split("peak_rss_kb")[1].split()[0])
    assert peak_kb < 1_200_000, (
        peak_kb
    )  # torch and a tiny model; a decoded 144 MP image alone is 432 MB, as floats 1.7 GB
    with running_server(tiny_detector(), ServeConfig()) as url:
        response = httpx.post(f"{url}/v1/detect", files=[("files", (str(bomb), bomb.read_bytes()))], timeout=60)
    assert response.status_code == 413
    message = response.json()["detail"]
    limit = "50,000,000-pixel limit (raise it with --max-pixels if the image is genuine)"
    assert message == f"{bomb}: 12000x12000 pixels is over the {limit}"
    assert f"failed: {message}" in done.stderr  # the same words on the command line
