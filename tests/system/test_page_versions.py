"""#32 on the page: the "Model versions" section of a real server in headless Chromium, with the API key typed into
the page. The table shows exactly the API's numbers (rounded as the page rounds them), Promote and Rollback change
the profile's model as the API then reports, and Adapt follows its job to a new version."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.serving import ARTIFACTS, chromium
from tests.support.versions import fixed, labelled_server

KEY = "page-k3y"


def shown(value: float | None) -> str:
    return fixed(value, none="–")


def expected_row(v: dict[str, Any]) -> list[str]:
    new, cur = v["numbers"]["new"], v["numbers"]["current"]
    numbers = [shown(new["image_auroc"]), shown(cur["image_auroc"]), shown(new["f1"]), shown(cur["f1"])]
    return [str(v["version"]), str(new["rows"]), *numbers, shown(new["threshold"]), "current" if v["current"] else ""]


def shown_row(browser: Any, version: int) -> list[str]:
    """A version's row as the page shows it, without its created time and its button (read in one script: the
    table is redrawn whenever the page asks the server again)."""
    texts: list[str] = browser.execute_script(
        "const tr = document.querySelector(`#versions-table tr[data-version='${arguments[0]}']`);"
        "return tr ? [...tr.cells].map((td) => td.textContent) : [];",
        version,
    )
    return [texts[0], *texts[2:9]] if texts else []


def versions(http: httpx.Client) -> dict[int, dict[str, Any]]:
    listing = http.get("/v1/profiles/default/models")
    assert listing.status_code == 200, listing.text
    return {v["version"]: v for v in listing.json()["versions"]}


def model_version(http: httpx.Client) -> int | None:
    version: int | None = http.get("/v1/profiles/default").json()["model_version"]
    return version


@pytest.mark.slow
def test_the_page_shows_the_apis_versions_promotes_rolls_back_and_adapts(tmp_path: Path, shared_data: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    with labelled_server(tmp_path / "st", shared_data, KEY) as (url, http):
        job = http.post("/v1/profiles/default/adapt", json={"max_steps": 1, "synth": ["cutpaste"], "seed": 1}).json()
        deadline = time.monotonic() + 180
        while job["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
            job = http.get(job["url"]).json()
        assert job["state"] == "done", job
        first = versions(http)[1]
        assert first["numbers"]["new"]["image_auroc"] is not None  # a number to compare, not two dashes

        browser = chromium()
        wait = WebDriverWait(browser, 60)
        try:
            browser.get(url + "/")
            key = browser.find_element(By.ID, "apikey")
            key.send_keys(KEY, Keys.TAB)  # "change": the page asks again, with the key
            wait.until(lambda b: shown_row(b, 1))
            assert shown_row(browser, 1) == expected_row(first)
            assert not browser.find_element(By.ID, "rollback").is_enabled()

            promote = '#versions-table tr[data-version="1"] button.promote'
            browser.find_element(By.CSS_SELECTOR, promote).click()
            wait.until(lambda b: model_version(http) == 1)
            wait.until(lambda b: shown_row(b, 1)[-1] == "current")
            assert not browser.find_elements(By.CSS_SELECTOR, promote)  # the current version has no Promote
            assert shown_row(browser, 1) == expected_row(versions(http)[1])
            wait.until(lambda b: b.find_element(By.ID, "rollback").is_enabled())

            browser.find_element(By.ID, "rollback").click()
            wait.until(lambda b: model_version(http) is None)
            wait.until(lambda b: shown_row(b, 1)[-1] == "")
            wait.until(lambda b: not b.find_element(By.ID, "rollback").is_enabled())

            browser.find_element(By.ID, "adapt-steps").send_keys("1")
            browser.find_element(By.ID, "adapt").click()
            wait.until(lambda b: "adapt running" in b.find_element(By.ID, "job").text)
            assert not browser.find_element(By.ID, "adapt").is_enabled()  # one job at a time from here
            WebDriverWait(browser, 180).until(lambda b: "adapt done" in b.find_element(By.ID, "job").text)
            assert "made version 2" in browser.find_element(By.ID, "job").text
            wait.until(lambda b: shown_row(b, 2))
            made = versions(http)[2]
            assert made["config"]["train"]["max_steps"] == 1
            assert shown_row(browser, 2) == expected_row(made)
            assert browser.find_element(By.ID, "adapt").is_enabled()
            ARTIFACTS.mkdir(exist_ok=True)
            assert browser.save_screenshot(str(ARTIFACTS / "station_versions.png"))
        finally:
            browser.quit()
