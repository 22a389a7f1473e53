"""The page shows only what is true (#30, finding 24): with no threshold chosen, no result is labelled good or
defect by the slider's resting place; moving the slider is a choice, and then labels follow it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kanoclip.inference.detector import Detector
from kanoclip.station.serve import ServeConfig
from tests.support.serving import chromium, running_server
from tests.support.serving import detector as detector


@pytest.mark.slow
def test_without_a_threshold_the_page_labels_nothing_until_one_is_chosen(detector: Detector, shared_data: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    assert detector.thresholds.image_threshold is None
    path = sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("*.jpg"))[0]
    with running_server(detector, ServeConfig()) as url:
        browser = chromium()
        try:
            browser.get(url + "/")
            WebDriverWait(browser, 30).until(lambda b: "kanoclip-tiny" in b.find_element(By.ID, "info").text)
            browser.find_element(By.ID, "files").send_keys(str(path))
            WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".card img.overlay"))
            label = browser.find_element(By.CSS_SELECTOR, ".card .label")
            assert label.text == "–"  # not "good"/"defect" by an invented 0.500
            assert "no threshold yet" in browser.find_element(By.ID, "threshold-value").text
            assert "no threshold yet" in browser.find_element(By.ID, "counts").text
            browser.execute_script(
                "const s = document.getElementById('threshold'); s.value = 0; s.dispatchEvent(new Event('input'));"
            )
            assert label.text == "defect"  # a threshold someone chose: every score is at or above 0
        finally:
            browser.quit()
