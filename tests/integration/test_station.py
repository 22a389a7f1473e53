"""The inspection station: what `serve` is taught and what it inspected survive restarts, in SQLite and in a real
PostgreSQL (a throwaway cluster on 127.0.0.1); profiles share one model; thresholds from leave-one-out scores."""

from __future__ import annotations

import base64
import csv
import io
import math
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import inspect, select

from kanoclip.cli import main
from kanoclip.errors import ConfigError
from kanoclip.inference.overlays import bar_height
from kanoclip.station import db
from kanoclip.station.serve import create_app
from kanoclip.station.station import Station
from tests.conftest import TINY, tiny_detector
from tests.support.station import (
    BOTTLE,
    HAZELNUT,
    assert_every_row_has_its_files,
    base_run,
    files,
    goods,
    ok,
    probes,
    station_client,
)


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

        def full(path: Path, data: bytes, mode: int | None = None) -> None:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(kanoclip.station.store, "atomic_write_bytes", full)
        r = c.post("/v1/detect", files=files(probes(shared_data)[1:2]))
        assert r.status_code == 507 and "disk is full" in r.json()["detail"]
        monkeypatch.setattr(kanoclip.station.store, "atomic_write_bytes", real)
        ok(c.post("/v1/detect", files=files(probes(shared_data)[2:])))
        rows = ok(c.get("/v1/results"))["results"]
    assert [r["source"] for r in rows] == ["001.png", "000.png"]
    assert_every_row_has_its_files(tmp_path / "state", None)


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
    assert db.current_revision(upgraded) == db.head_revision() == "0009"  # 0009: defect types
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
        then = time.time() - 3600  # as an hour later: files just put may belong to a request in flight
        for blob in (tmp_path / "state" / "blobs").rglob("*"):
            os.utime(blob, (then, then))
        assert station.prune(keep_days=None, max_store_bytes=0, step=1) == 0  # the next pass takes the files
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


def test_serve_profile_flags_create_then_update_a_profile_and_no_flags_keep_it(
    tmp_path: Path, shared_data: Path
) -> None:
    """`kanoclip serve --profile NAME --class-name ... --reference ...` at start, as the command line builds it."""
    from kanoclip.cli import parse
    from kanoclip.cli.station import open_station
    from tests.support.serving import TINY_FLAGS

    state = tmp_path / "state"
    folder = shared_data / BOTTLE / "train" / "good"

    def start(*flags: str) -> Station:
        station = open_station(parse(["serve", "--state", str(state), *TINY_FLAGS, "--device", "cpu", *flags]))
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
