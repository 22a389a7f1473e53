"""The inspection station: what `serve` is taught and what it inspected survive restarts, in SQLite and in a real
PostgreSQL (a throwaway cluster on 127.0.0.1); profiles share one model; thresholds from leave-one-out scores."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from kanoclip.station import db
from kanoclip.station.serve import ServeConfig
from kanoclip.station.station import Station
from tests.support.postgres import Cluster, throwaway_cluster
from tests.support.station import (
    HAZELNUT,
    assert_every_row_has_its_files,
    base_run,
    files,
    goods,
    ok,
    probes,
    station_client,
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with throwaway_cluster() as c:
        yield c


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None: the state folder's own SQLite file; else a fresh database on the throwaway PostgreSQL cluster."""
    if request.param == "sqlite":
        return None
    cluster: Cluster = request.getfixturevalue("cluster")
    return cluster.new_database()


def test_a_restart_brings_back_profiles_banks_thresholds_feedback_and_every_result(
    tmp_path: Path, shared_data: Path, database_url: str | None
) -> None:
    state = tmp_path / "state"
    hazelnuts = sorted((shared_data / HAZELNUT / "train" / "good").glob("*"))[:2]
    with station_client(state, database_url) as c:
        ok(c.post("/v1/references", files=files(goods(shared_data))))
        ok(c.post("/v1/profiles", json={"name": "hazelnut", "class_name": "hazelnut"}))
        ok(c.post("/v1/profiles/hazelnut/references", files=files(hazelnuts)))
        ok(c.post("/v1/profiles/default/calibrate", json={"false_alarm_rate": 0.2}))
        first = ok(c.post("/v1/detect", files=files(probes(shared_data))))["results"]
        ok(c.post("/v1/profiles/hazelnut/detect", files=files(probes(shared_data)[:1])))
        marked = ok(c.post(f"/v1/results/{first[0]['result_id']}/feedback", json={"verdict": "good"}))
        assert marked["references"]["images"] == 4  # "good" added the part to the bank
        ok(c.post(f"/v1/results/{first[1]['result_id']}/feedback", json={"verdict": "defect", "note": "crack"}))
        profiles = ok(c.get("/v1/profiles"))
        history = ok(c.get("/v1/results"))["results"]
        scores = [r["score"] for r in ok(c.post("/v1/detect", files=files(probes(shared_data))))["results"]]
        banks = {n: ok(c.get(f"/v1/profiles/{n}/references")) for n in ("default", "hazelnut")}
    assert len(history) == 4 and {r["profile"] for r in history} == {"default", "hazelnut"}

    with station_client(state, database_url) as c:
        assert ok(c.get("/v1/profiles")) == profiles  # names, classes, thresholds and their basis, versions
        assert {n: ok(c.get(f"/v1/profiles/{n}/references")) for n in ("default", "hazelnut")} == banks
        assert ok(c.get("/v1/results", params={"limit": 1000}))["results"][3:] == history
        again = ok(c.post("/v1/detect", files=files(probes(shared_data))))["results"]
        assert [r["score"] for r in again] == pytest.approx(scores, abs=1e-6)  # the same bank, text and thresholds
        detail = ok(c.get(f"/v1/results/{first[1]['result_id']}"))
        assert detail["feedback"][0]["verdict"] == "defect" and detail["feedback"][0]["note"] == "crack"
    threshold = profiles["profiles"][0]["thresholds"]["image_threshold"]
    assert threshold is not None and all(r["label"] == int(r["score"] >= threshold) for r in again)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_during_8_concurrent_clients_loses_no_acknowledged_result(
    tmp_path: Path, shared_data: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """`kanoclip serve` in its own process, 8 clients posting detections; SIGKILL mid-stream. Every request answered
    200 is in the history afterwards, and no row names a file that is not in the store."""
    import signal
    import threading

    import httpx

    from tests.support.serving import serve_process

    url = None if backend == "sqlite" else request.getfixturevalue("cluster").new_database()
    state = tmp_path / "state"
    images = probes(shared_data)
    acknowledged: list[int] = []
    lock, stop = threading.Lock(), threading.Event()
    with serve_process("--state", str(state), *(["--database", url] if url else [])) as (proc, base):

        def client(k: int) -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    try:
                        r = http.post(f"{base}/v1/detect", files=files([images[k % len(images)]]))
                    except httpx.TransportError:
                        return  # the server is gone
                    if r.status_code == 200:
                        with lock:
                            acknowledged.extend(x["result_id"] for x in r.json()["results"])

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acknowledged) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert len(acknowledged) >= 40
    engine = db.connect(url or db.database_url(state), upgrade=False)
    with engine.connect() as c:
        recorded = {row.id for row in c.execute(select(db.results.c.id))}
    engine.dispose()
    assert set(acknowledged) <= recorded, sorted(set(acknowledged) - recorded)
    assert assert_every_row_has_its_files(state, url) == len(recorded)


@pytest.mark.slow
def test_two_instances_on_one_postgresql_share_banks_thresholds_and_history(
    tmp_path: Path, shared_data: Path, cluster: Cluster
) -> None:
    """Two `kanoclip serve` processes on one database and one state folder: a bank added through A changes B's
    scores within the stated delay (a profile version polled every second), a profile made on B is served by A, and
    results from both land in one history."""
    import httpx

    from tests.support.serving import serve_process

    url, state = cluster.new_database(), tmp_path / "state"
    probe = files(probes(shared_data)[1:2])
    with (
        serve_process("--state", str(state), "--database", url) as (_, a),
        serve_process("--state", str(state), "--database", url) as (_, b),
    ):
        before = ok(httpx.post(f"{b}/v1/detect", files=probe, timeout=60))["results"][0]["score"]
        added = ok(httpx.post(f"{a}/v1/references", files=files(goods(shared_data)), timeout=60))
        start, seen = time.monotonic(), None
        while time.monotonic() - start < 10:
            answer = ok(httpx.post(f"{b}/v1/detect", files=probe, timeout=60))["results"][0]
            if answer["references"]["id"] == added["id"]:
                seen = time.monotonic() - start
                break
            time.sleep(0.1)
        assert seen is not None and seen < 5, "B did not pick up A's bank within 5 s"
        assert answer["score"] != pytest.approx(before, abs=1e-4)
        on_a = ok(httpx.post(f"{a}/v1/detect", files=probe, timeout=60))["results"][0]
        assert on_a["score"] == pytest.approx(answer["score"], abs=1e-6)  # one bank, the same scores
        ok(httpx.post(f"{b}/v1/profiles", json={"name": "second", "class_name": "bottle"}, timeout=60))
        deadline = time.monotonic() + 10
        while httpx.post(f"{a}/v1/profiles/second/detect", files=probe, timeout=60).status_code == 404:
            assert time.monotonic() < deadline, "A did not see the profile made on B"
            time.sleep(0.1)
        history = ok(httpx.get(f"{a}/v1/results", params={"limit": 1000}, timeout=60))["results"]
    assert len({r["instance"] for r in history}) == 2
    print(f"B used A's bank {seen:.2f} s after A acknowledged it")


@pytest.mark.slow
def test_the_page_switches_profiles_shows_history_feedback_calibration_and_the_stale_banner(
    tmp_path: Path, shared_data: Path
) -> None:
    """The real page in headless Chromium on a station with two profiles: each profile's history, a row's overlay,
    the plot with its threshold line after calibrating from the page, "defect" feedback recorded, and the stale
    banner once the bank changes. A screenshot is kept in test-artifacts/."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from tests.support.serving import ARTIFACTS, chromium, running_server

    station = Station.open(base_run(), tmp_path / "state")
    station.configure("default", base_run())
    station.configure("hazelnut", base_run(class_name="hazelnut"))
    probe = probes(shared_data)[1]
    parts = goods(shared_data, n=3)
    with running_server(station, ServeConfig()) as url:
        browser = chromium()
        wait = WebDriverWait(browser, 60)
        try:
            browser.get(url + "/")
            wait.until(lambda b: len(Select(b.find_element(By.ID, "profile")).options) == 2)
            assert not browser.find_element(By.ID, "history").get_attribute("hidden")
            browser.find_element(By.ID, "files").send_keys(str(probe))
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#history-table tbody tr")) == 1)
            Select(browser.find_element(By.ID, "profile")).select_by_value("hazelnut")
            wait.until(lambda b: not b.find_elements(By.CSS_SELECTOR, "#history-table tbody tr"))  # its own history
            Select(browser.find_element(By.ID, "profile")).select_by_value("default")
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#history-table tbody tr")) == 1)
            assert not browser.find_elements(By.CSS_SELECTOR, ".card")  # the view starts empty for each profile
            browser.find_element(By.ID, "files").send_keys(str(probe))
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#history-table tbody tr")) == 2)
            browser.find_element(By.ID, "good-files").send_keys("\n".join(str(p) for p in parts))
            wait.until(lambda b: b.find_element(By.ID, "bank").text.startswith("bank: 3 good parts"))
            browser.find_element(By.ID, "calibrate").click()
            wait.until(lambda b: "threshold" in b.find_element(By.ID, "calibration").text)
            wait.until(lambda b: b.find_elements(By.ID, "threshold-line"))
            assert browser.find_element(By.ID, "warning").get_attribute("hidden")
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".card .mark-defect"))
            wait.until(
                lambda b: (
                    len(b.find_elements(By.CSS_SELECTOR, ".card img.overlay"))
                    == len(b.find_elements(By.CSS_SELECTOR, ".card"))
                )
            )
            browser.find_element(By.CSS_SELECTOR, ".card .mark-defect").click()
            first_row = "#history-table tbody tr:first-child td:nth-child(5)"
            wait.until(lambda b: b.find_element(By.CSS_SELECTOR, first_row).text == "defect")  # the verdict column
            browser.find_elements(By.CSS_SELECTOR, "#history-table tbody tr")[0].click()  # the card's latest result
            wait.until(lambda b: b.find_element(By.ID, "history-overlay").get_attribute("hidden") is None)
            overlay = browser.find_element(By.ID, "history-overlay")
            wait.until(lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay))
            assert "feedback: defect" in browser.find_element(By.ID, "history-detail").text
            assert browser.find_elements(By.CSS_SELECTOR, "#plot circle.point")
            assert browser.find_elements(By.CSS_SELECTOR, "#plot rect.rate")
            more = goods(shared_data, n=4)[3]
            browser.find_element(By.ID, "good-files").send_keys(str(more))  # the bank changes: thresholds go stale
            wait.until(lambda b: "recalibrate" in b.find_element(By.ID, "warning").text)
            ARTIFACTS.mkdir(exist_ok=True)
            assert browser.save_screenshot(str(ARTIFACTS / "station_page.png"))
        finally:
            browser.quit()
    assert station.engine is not None
    with station.engine.connect() as c:
        verdicts = [row.verdict for row in c.execute(select(db.feedback))]
    assert verdicts == ["defect"]
