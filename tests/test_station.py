"""The inspection station: what `serve` is taught and what it inspected survive restarts, in SQLite and in a real
PostgreSQL (a throwaway cluster on 127.0.0.1); profiles share one model; thresholds from leave-one-out scores."""

from __future__ import annotations

import base64
import csv
import io
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import inspect, select

from kanoclip.cli import main
from kanoclip.errors import ConfigError
from kanoclip.inference.config import RunConfig
from kanoclip.inference.overlays import bar_height
from kanoclip.station import db
from kanoclip.station.serve import ServeConfig, create_app
from kanoclip.station.station import Station

from .conftest import TINY, tiny_detector
from .postgres import Cluster, throwaway_cluster

BOTTLE = "MVTec_AD/bottle"
HAZELNUT = "MVTec_derived_hazelnut_toy/hazelnut"


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


def base_run(**fields: Any) -> RunConfig:
    return RunConfig.with_model(TINY, device="cpu", workers=0, **fields)


@contextmanager
def station_client(state: Path, url: str | None = None, **serve: Any) -> Iterator[TestClient]:
    """A station opened as `kanoclip serve --state state [--database url]` does, behind the real app."""
    station = Station.open(base_run(), state, url)
    station.configure("default", base_run())
    app = create_app(station, ServeConfig(**serve))
    try:
        with TestClient(app, base_url="http://127.0.0.1") as client:
            yield client
    finally:
        assert station.engine is not None
        station.engine.dispose()


def files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (p.name, p.read_bytes())) for p in paths]


def goods(shared_data: Path, which: str = BOTTLE, n: int = 3) -> list[Path]:
    return sorted((shared_data / which / "train" / "good").glob("*.png"))[:n]


def probes(shared_data: Path) -> list[Path]:
    test = shared_data / BOTTLE / "test"
    return [test / "good" / "000.png", test / "broken_large" / "000.png", test / "contamination" / "001.png"]


def ok(response: Any) -> Any:
    assert response.status_code in (200, 201), response.text
    return response.json()


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


def test_two_profiles_in_one_process_score_as_two_single_servers_with_one_model(
    tmp_path: Path, shared_data: Path
) -> None:
    """Two products, each with its class text and bank, interleaved in the same batches, against two servers that
    each serve one product; the two profiles share one backend."""
    hazelnuts = sorted((shared_data / HAZELNUT / "train" / "good").glob("*"))[:2]
    images = probes(shared_data) + sorted((shared_data / HAZELNUT / "test").rglob("*.jpg"))[:3]
    with station_client(tmp_path / "state", max_batch=16, max_wait_ms=200) as c:
        ok(c.patch("/v1/profiles/default", json={"class_name": "bottle"}))
        ok(c.post("/v1/references", files=files(goods(shared_data))))
        ok(c.post("/v1/profiles", json={"name": "hazelnut", "class_name": "hazelnut"}))
        ok(c.post("/v1/profiles/hazelnut/references", files=files(hazelnuts)))
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            a = pool.submit(lambda: ok(c.post("/v1/detect", files=files(images)))["results"])
            b = pool.submit(lambda: ok(c.post("/v1/profiles/hazelnut/detect", files=files(images)))["results"])
            together = {"bottle": a.result(), "hazelnut": b.result()}
        station: Station = c.app.state.station  # type: ignore[attr-defined]
        assert len(station.backends) == 1
        assert station.detectors["default"].backend is station.detectors["hazelnut"].backend
    for class_name, references in (("bottle", goods(shared_data)), ("hazelnut", hazelnuts)):
        alone = tiny_detector(class_name=class_name, references=tuple(str(p) for p in references))
        with TestClient(create_app(alone), base_url="http://127.0.0.1") as single:
            expected = ok(single.post("/v1/detect", files=files(images)))["results"]
        assert [r["score"] for r in together[class_name]] == pytest.approx([r["score"] for r in expected], abs=1e-6)


def test_leave_one_out_thresholds_equal_an_independent_computation(tmp_path: Path, shared_data: Path) -> None:
    """Each good part scored by a separate detector whose bank holds only the other parts; the threshold is the
    smallest float above the (floor(rate * n) + 1)-th largest of those scores."""
    parts = goods(shared_data, n=5)
    rate = 0.25
    with station_client(tmp_path / "state") as c:
        ok(c.post("/v1/references", files=files(parts)))
        calibration = ok(c.post("/v1/profiles/default/calibrate", json={"false_alarm_rate": rate}))
        profile = ok(c.get("/v1/profiles/default"))
    loo = []
    for i, part in enumerate(parts):
        others = tuple(str(p) for j, p in enumerate(parts) if j != i)
        loo.append(tiny_detector(references=others).predict(part)[0])
    by_source = {r["source"]: r["score"] for r in calibration["leave_one_out"]}
    assert [by_source[p.name] for p in parts] == pytest.approx(loo, abs=1e-6)
    allowed = math.floor(rate * len(loo))
    cut = sorted(loo, reverse=True)[allowed]
    assert calibration["image_threshold"] == pytest.approx(float(np.nextafter(cut, np.inf)), abs=1e-6)
    assert calibration["image"]["images"] == 5 and calibration["image"]["method"] == "false_alarm_rate"
    assert sum(s >= calibration["image_threshold"] for s in loo) == allowed  # the promised false-alarm count
    assert profile["thresholds"]["image_threshold"] == calibration["image_threshold"]
    assert profile["threshold_stale"] is None


def test_a_bank_or_text_change_marks_the_thresholds_stale_until_recalibrated(tmp_path: Path, shared_data: Path) -> None:
    parts = goods(shared_data, n=4)
    with station_client(tmp_path / "state") as c:
        ok(c.post("/v1/references", files=files(parts[:3])))
        ok(c.post("/v1/profiles/default/calibrate", json={"false_alarm_rate": 0.3}))
        assert ok(c.post("/v1/detect", files=files(parts[3:])))["threshold_warning"] is None
        ok(c.post("/v1/references", files=files(parts[3:])))
        stale = ok(c.get("/v1/profiles/default"))["threshold_stale"]
        assert stale and "references" in stale
        answer = ok(c.post("/v1/detect", files=files(parts[3:])))
        assert "recalibrate" in answer["threshold_warning"]
        row = ok(c.get(f"/v1/results/{answer['results'][0]['result_id']}", params={"include_map": False}))
        assert "references" in row["threshold_stale"]  # recorded with the result, not only shown
        ok(c.post("/v1/profiles/default/calibrate", json={"false_alarm_rate": 0.3}))
        assert ok(c.get("/v1/profiles/default"))["threshold_stale"] is None
        ok(c.patch("/v1/profiles/default", json={"class_name": "bottle"}))
        assert "text" in ok(c.get("/v1/profiles/default"))["threshold_stale"]


def test_results_page_by_keyset_filter_and_stream_as_csv(tmp_path: Path, shared_data: Path) -> None:
    images = probes(shared_data)
    with station_client(tmp_path / "state") as c:
        ok(c.post("/v1/references", files=files(goods(shared_data))))
        ok(c.post("/v1/profiles/default/calibrate", json={"false_alarm_rate": 0.4}))
        ok(c.post("/v1/profiles", json={"name": "other", "class_name": "bottle"}))
        for _ in range(3):
            ok(c.post("/v1/detect", files=files(images)))
        ok(c.post("/v1/profiles/other/detect", files=files(images[:1])))
        everything = ok(c.get("/v1/results", params={"limit": 1000}))["results"]
        assert len(everything) == 10 and [r["id"] for r in everything] == sorted(r["id"] for r in everything)[::-1]
        pages, cursor = [], None
        while True:
            page = ok(c.get("/v1/results", params={"limit": 3, **({"cursor": cursor} if cursor else {})}))
            pages += page["results"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == everything
        assert [r["id"] for r in ok(c.get("/v1/results", params={"profile": "other"}))["results"]] == [
            everything[0]["id"]
        ]
        defects = ok(c.get("/v1/results", params={"label": 1, "limit": 1000}))["results"]
        assert [r["id"] for r in defects] == [r["id"] for r in everything if r["label"] == 1]
        middle = everything[5]["time"]
        newer = ok(c.get("/v1/results", params={"since": middle, "limit": 1000}))["results"]
        assert {r["id"] for r in newer} == {r["id"] for r in everything if r["time"] >= middle}
        streamed = list(csv.DictReader(io.StringIO(c.get("/v1/results", params={"format": "csv"}).text)))
        assert [int(r["id"]) for r in streamed] == [r["id"] for r in everything]
        assert [float(r["score"]) for r in streamed] == [r["score"] for r in everything]
        detail = ok(c.get(f"/v1/results/{everything[1]['id']}"))
        overlay = Image.open(io.BytesIO(base64.b64decode(detail["overlay_png"])))
        amap = np.load(io.BytesIO(base64.b64decode(detail["map"]["npy_base64"])))
        width, height = Image.open(images[1]).size
        assert overlay.size == (width, height + bar_height(width)) and amap.shape == (TINY.image_size, TINY.image_size)
        assert amap.dtype == np.float16
        assert detail["backbone_fingerprint"] and detail["engine"] == "torch" and detail["latency_ms"] > 0


def test_metrics_count_requests_detections_and_scores_per_profile(tmp_path: Path, shared_data: Path) -> None:
    with station_client(tmp_path / "state") as c:
        ok(c.post("/v1/detect", files=files(probes(shared_data))))
        ok(c.post("/v1/detect", files=files(probes(shared_data)[:1])))
        assert c.get("/v1/profiles/nope").status_code == 404
        families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
    detections = {
        s.labels["label"]: s.value for s in families["kanoclip_detections"].samples if s.name.endswith("_total")
    }
    assert sum(detections.values()) == 4 and detections == {"unlabelled": 4.0}
    requests = {
        (s.labels["endpoint"], s.labels["status"]): s.value
        for s in families["kanoclip_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests[("/v1/detect", "200")] == 2 and requests[("/v1/profiles/{name}", "404")] == 1
    batches = [s for s in families["kanoclip_batch_images"].samples if s.name.endswith("_count")]
    assert batches[0].value == 2
    scores = [s for s in families["kanoclip_score"].samples if s.name.endswith("_count")]
    assert scores[0].labels["profile"] == "default" and scores[0].value == 4


def test_bad_profile_names_are_400_and_unknown_profiles_404(tmp_path: Path, shared_data: Path) -> None:
    with station_client(tmp_path / "state") as c:
        for name in ("a/b", "..", ".hidden", "x" * 300, ""):
            r = c.post("/v1/profiles", json={"name": name, "class_name": "bottle"})
            assert r.status_code == 400, (name, r.text)
        assert c.get("/v1/profiles/" + "x" * 300).status_code == 400
        assert c.get("/v1/results", params={"profile": ".."}).status_code == 400
        r = c.post("/v1/profiles/nope/detect", files=files(probes(shared_data)[:1]))
        assert r.status_code == 404 and "no profile 'nope'" in r.json()["detail"]
        assert c.get("/v1/results/999999").status_code == 404
        assert c.post("/v1/results/999999/feedback", json={"verdict": "good"}).status_code == 404
        assert c.post("/v1/profiles", json={"name": "p", "checkpoint": "/etc/passwd"}).status_code == 403
        assert c.post("/v1/profiles", json={"name": "default"}).status_code == 409
        assert c.delete("/v1/profiles/default").status_code == 409
        assert ok(c.get("/v1/profiles"))["profiles"][0]["name"] == "default"  # nothing half-made


def test_a_full_disk_is_507_for_that_request_and_the_history_stays_consistent(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's write fails with ENOSPC (as on a full disk) for one request: 507, nothing recorded for it, and the
    next request is answered and recorded."""
    import errno

    import kanoclip.station.store

    real = kanoclip.station.store.atomic_write_bytes
    with station_client(tmp_path / "state") as c:
        ok(c.post("/v1/detect", files=files(probes(shared_data)[:1])))

        def full(path: Path, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(kanoclip.station.store, "atomic_write_bytes", full)
        r = c.post("/v1/detect", files=files(probes(shared_data)[1:2]))
        assert r.status_code == 507 and "disk is full" in r.json()["detail"]
        monkeypatch.setattr(kanoclip.station.store, "atomic_write_bytes", real)
        ok(c.post("/v1/detect", files=files(probes(shared_data)[2:])))
        rows = ok(c.get("/v1/results"))["results"]
    assert [r["source"] for r in rows] == ["001.png", "000.png"]
    assert_every_row_has_its_files(tmp_path / "state", None)


def assert_every_row_has_its_files(state: Path, url: str | None) -> int:
    engine = db.connect(url or db.database_url(state), upgrade=False)
    store = state / "blobs"
    with engine.connect() as c:
        rows = list(c.execute(select(db.results)))
    engine.dispose()
    for row in rows:
        for sha in (row.image_sha256, row.overlay_sha256, row.map_sha256):
            assert sha is None or (store / sha[:2] / sha).is_file(), (row.id, sha)
    return len(rows)


def test_an_unreachable_or_newer_database_is_refused_at_start_and_nothing_is_written(tmp_path: Path) -> None:
    state = tmp_path / "never"
    with pytest.raises(ConfigError, match="cannot reach the database"):
        Station.open(base_run(), state, "postgresql://kanoclip:secret@127.0.0.1:1/kanoclip")
    assert not state.exists()
    code = main(["serve", "--state", str(state), "--database", "postgresql://kanoclip:secret@127.0.0.1:1/kanoclip"])
    assert code == 2 and not state.exists()

    newer = tmp_path / "newer"
    newer.mkdir()
    engine = db.connect(db.database_url(newer))
    engine.dispose()
    with sqlite3.connect(newer / db.DATABASE_FILE) as c:
        c.execute("UPDATE alembic_version SET version_num = '9999'")
    before = (newer / db.DATABASE_FILE).read_bytes()
    with pytest.raises(ConfigError, match="newer kanoclip"):
        Station.open(base_run(), newer)
    assert (newer / db.DATABASE_FILE).read_bytes() == before
    assert not (newer / "blobs").exists()


def test_migrations_run_from_an_empty_database_and_from_the_previous_schema(tmp_path: Path) -> None:
    """Revision 0001 with a result in it, then this version's head: the row is kept, the new table and column are
    there; from empty, every table is created."""
    from alembic import command

    url = db.database_url(tmp_path)
    engine = db.create(url)
    command.upgrade(db._alembic_config(engine), "0001")  # type: ignore[arg-type]
    with engine.begin() as c:
        c.exec_driver_sql(
            "INSERT INTO results (created_at, profile, source, stored_bytes, score) VALUES (1.0, 'p', 'a.png', 0, 0.5)"
        )
    engine.dispose()
    upgraded = db.connect(url)
    assert db.current_revision(upgraded) == db.head_revision() == "0003"
    with upgraded.connect() as c:
        row = c.execute(select(db.results)).one()
        assert row.score == 0.5 and row.instance is None
        assert c.execute(select(db.feedback)).all() == []
    (tmp_path / "fresh").mkdir()
    fresh = db.connect(db.database_url(tmp_path / "fresh"))
    assert set(inspect(fresh).get_table_names()) == {*db.metadata.tables, "alembic_version"}


def test_retention_prunes_old_results_in_steps_and_keeps_files_other_rows_name(
    tmp_path: Path, shared_data: Path
) -> None:
    image = probes(shared_data)[:1]
    with station_client(tmp_path / "state") as c:
        for _ in range(5):
            ok(c.post("/v1/detect", files=files(image)))  # five rows naming the same stored image
        ok(c.post("/v1/detect", files=files(probes(shared_data)[1:2])))
        station: Station = c.app.state.station  # type: ignore[attr-defined]
        assert station.engine is not None
        with station.engine.begin() as conn:
            conn.execute(db.results.update().where(db.results.c.id <= 4).values(created_at=0.0))
        assert station.prune(keep_days=1, max_store_bytes=None, step=2) == 4
        left = ok(c.get("/v1/results"))["results"]
        assert [r["id"] for r in left] == [6, 5]
        assert assert_every_row_has_its_files(tmp_path / "state", None) == 2  # row 5 still names the image
        assert station.prune(keep_days=None, max_store_bytes=0, step=1) == 2
        assert not any((tmp_path / "state" / "blobs").rglob("*.*")) and not [
            p for p in (tmp_path / "state" / "blobs").rglob("*") if p.is_file()
        ]


def test_history_command_lists_and_exports_what_the_station_recorded(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    with station_client(state) as c:
        ok(c.post("/v1/detect", files=files(probes(shared_data))))
        expected = ok(c.get("/v1/results"))["results"]
    assert main(["history", str(state), "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["id"]) for r in rows] == [r["id"] for r in expected]
    assert [r["source"] for r in rows] == [r["source"] for r in expected]
    assert main(["history", str(state), "--limit", "1"]) == 0
    assert expected[0]["source"] in capsys.readouterr().out
    assert main(["history", str(tmp_path / "nothing")]) == 2


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

    from .serving import serve_process

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

    from .serving import serve_process

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

    from .serving import chromium, running_server
    from .test_serve import ARTIFACTS

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


def test_serve_profile_flags_create_then_update_a_profile_and_no_flags_keep_it(
    tmp_path: Path, shared_data: Path
) -> None:
    """`kanoclip serve --profile NAME --class-name ... --reference ...` at start, as the command line builds it."""
    from kanoclip.cli import build_parser, open_station

    from .serving import TINY_FLAGS

    state = tmp_path / "state"
    folder = shared_data / BOTTLE / "train" / "good"

    def start(*flags: str) -> Station:
        args = build_parser().parse_args(["serve", "--state", str(state), *TINY_FLAGS, "--device", "cpu", *flags])
        station = open_station(args)
        assert station.engine is not None
        station.engine.dispose()
        return station

    first = start("--profile", "bottle", "--class-name", "bottle", "--reference", str(folder))
    made = first.profiles["bottle"]
    assert made.class_name == "bottle" and first.reference_count("bottle") == 10
    again = start("--profile", "bottle")  # no flags: the profile as stored, its bank from the store
    assert again.profiles["bottle"].version == made.version
    bank = again.detector("bottle").references
    assert bank is not None and bank.images == 10
    changed = start("--profile", "bottle", "--class-name", "glass bottle", "--reference", str(folder))
    assert changed.profiles["bottle"].class_name == "glass bottle"
    assert changed.reference_count("bottle") == 10  # the same images again: not added twice
    assert changed.detector("bottle").text_record["class"] == "glass bottle"
