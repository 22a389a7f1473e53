"""Pictures people read: the evaluation report's plots, per-defect tables and captions, `detect --report`, and the
overlays' colour scale."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from kanoclip.cli import main
from tests.support.serving import TINY_FLAGS, chromium


def test_the_report_lays_out_kolektor_parts_tall_in_chromium(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    assert main(["evaluate", str(shared_data / "KolektorSDD"), "--out", str(out), "--cases", "2", *TINY_FLAGS]) == 0
    browser = chromium()
    try:
        browser.get((out / "report.html").as_uri())
        sizes = browser.execute_script(
            "return [...document.querySelectorAll('.cases img')].map(i => [i.naturalWidth, i.naturalHeight, "
            "i.getBoundingClientRect().width, i.getBoundingClientRect().height])"
        )
        browser.save_screenshot(str(tmp_path / "report.png"))
    finally:
        browser.quit()
    assert len(sizes) == 4
    for natural_w, natural_h, shown_w, shown_h in sizes:
        assert shown_w / shown_h == pytest.approx(natural_w / natural_h, rel=0.02)  # laid out unsquashed
        assert natural_w < natural_h * 1.6  # three tall panels (500 x ~1250 each), not three squares
    assert Image.open(tmp_path / "report.png").size[0] > 0
