"""`kanoclip serve` over real HTTP: every field, bad uploads, API keys, micro-batching, the page, a real browser."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kanoclip.inference.detector import Detector
from kanoclip.station.serve import ServeConfig
from tests.support.serving import ARTIFACTS, bilevel_png, chromium, running_server, serve_process
from tests.support.serving import detector as detector


@pytest.mark.slow
def test_the_page_scores_an_uploaded_image_in_headless_chromium(detector: Detector, shared_data: Path) -> None:
    """Debian's chromium + chromium-driver (installed by .ci/run) drive the real page; a screenshot is kept."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = shared_data / "MVTec_derived_hazelnut_toy"
    path = sorted(image.rglob("*.jpg"))[0]
    want, _ = detector.predict(path)
    with running_server(detector, ServeConfig()) as url:
        browser = chromium()
        try:
            browser.get(url + "/")
            WebDriverWait(browser, 30).until(lambda b: "kanoclip-tiny" in b.find_element(By.ID, "info").text)
            browser.find_element(By.ID, "files").send_keys(str(path))
            WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".card img.overlay"))
            score = float(browser.find_element(By.CSS_SELECTOR, ".card .score").text)
            overlay = browser.find_element(By.CSS_SELECTOR, ".card img.overlay")
            assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) > 0
            assert score == pytest.approx(want, abs=1e-4)
            label = browser.find_element(By.CSS_SELECTOR, ".card .label")
            browser.execute_script(
                "const s = document.getElementById('threshold'); s.value = arguments[0];"
                "s.dispatchEvent(new Event('input'));",
                max(score - 0.001, 0.0),
            )
            assert label.text == "defect"
            browser.execute_script(
                "const s = document.getElementById('threshold'); s.value = arguments[0];"
                "s.dispatchEvent(new Event('input'));",
                min(score + 0.001, 1.0),
            )
            assert label.text == "good"  # the slider re-labels live
            rows = browser.find_elements(By.CSS_SELECTOR, "#table tbody tr")
            assert len(rows) == 1 and path.name in rows[0].text
            assert browser.find_element(By.ID, "bank").text == "bank: 0 good parts"
            good = sorted(image.rglob("train/good/*"))[0]
            browser.find_element(By.ID, "good-files").send_keys(str(good))  # a good part into the bank
            WebDriverWait(browser, 60).until(
                lambda b: b.find_element(By.ID, "bank").text.startswith("bank: 1 good part")
            )
            rescored = lambda b: b.find_element(By.CSS_SELECTOR, ".card .score").text  # noqa: E731
            WebDriverWait(browser, 60).until(lambda b: rescored(b) not in ("", f"{score:.4f}"))
            browser.find_element(By.CSS_SELECTOR, ".card .mark-good").click()  # a false alarm corrected once
            WebDriverWait(browser, 60).until(
                lambda b: b.find_element(By.ID, "bank").text.startswith("bank: 2 good parts")
            )
            # the image itself is now in the bank: its reference map is 0, so its score is half its zero-shot score
            WebDriverWait(browser, 60).until(lambda b: abs(float(rescored(b) or 9) - score / 2) < 2e-4)
            assert len(detector.references.sources if detector.references else []) == 2
            ARTIFACTS.mkdir(exist_ok=True)
            assert browser.save_screenshot(str(ARTIFACTS / "serve_page.png"))
        finally:
            browser.quit()
            detector.clear_references()
    assert os.path.getsize(ARTIFACTS / "serve_page.png") > 10_000


@pytest.mark.slow
def test_bombs_and_endless_bodies_leave_a_real_servers_memory_bounded(tmp_path: Path) -> None:
    """`kanoclip serve` in its own process: four 7000 x 7000 1-bit PNGs in one request and a 200 MB chunked body; its
    peak RSS (VmHWM) grows by well under a decoded image's worth."""
    import re

    with serve_process("--no-state") as (proc, base):

        def peak_kb() -> int:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

        before = peak_kb()
        bombs = [("files", (f"{i}.png", bilevel_png(7000, 7000))) for i in range(4)]
        assert httpx.post(f"{base}/v1/detect", files=bombs, timeout=120).status_code == 413

        def endless() -> Iterator[bytes]:
            yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n\r\n'
            for _ in range(800):
                yield b"\0" * (256 * 1024)

        headers = {"content-type": "multipart/form-data; boundary=b"}
        try:
            r = httpx.post(f"{base}/v1/detect", content=endless(), headers=headers, timeout=120)
            assert r.status_code == 413
        except httpx.TransportError:
            pass  # closed while still sending
        grown = peak_kb() - before
        print(f"peak RSS grew by {grown} kB")
        assert grown < 150_000, grown  # one decoded 7000 x 7000 RGB image alone is 147 MB, as floats 588 MB
