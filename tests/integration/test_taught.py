"""What the station is taught is kept (issue 30, findings 9, 10, 11, 14): a later verdict replaces an earlier one
everywhere, a verdict commits with its bank change or not at all, a model change keeps the bank, a failed calibrate
changes nothing, and a profile created again starts clean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kanoclip.errors import KanoclipError
from kanoclip.station.station import Station
from kanoclip.station.store import DiskFull, sha256_of
from tests.support.station import base_run, files, goods, ok, probes, station_client


def _station(c: TestClient) -> Station:
    station: Station = c.app.state.station  # type: ignore[attr-defined]
    return station


def _result(c: TestClient, image: Path, profile: str = "default") -> int:
    path = "/v1/detect" if profile == "default" else f"/v1/profiles/{profile}/detect"
    result_id: int = ok(c.post(path, files=files([image])))["results"][0]["result_id"]
    return result_id


def test_a_defect_verdict_after_a_good_one_takes_the_part_out_of_bank_and_calibration(
    tmp_path: Path, shared_data: Path
) -> None:
    """Finding 9: the latest verdict on a result is the one that counts, in the bank and in calibrate."""
    with station_client(tmp_path / "state") as c:
        ok(c.post("/v1/references", files=files(goods(shared_data, n=2))))
        rid = _result(c, probes(shared_data)[1])
        assert ok(c.post(f"/v1/results/{rid}/feedback", json={"verdict": "good"}))["references"]["images"] == 3
        answer = ok(c.post(f"/v1/results/{rid}/feedback", json={"verdict": "defect"}))
        assert answer["references"]["images"] == 2
        assert ok(c.get("/v1/profiles/default"))["references"] == 2
        assert ok(c.get("/v1/references"))["images"] == 2
        calibration = ok(c.post("/v1/profiles/default/calibrate", json={"false_alarm_rate": 0.3}))
        assert (calibration["good_parts"], calibration["defects"]) == (2, 1)
        # and back: good again puts it in the bank, and calibrate no longer counts it defect
        assert ok(c.post(f"/v1/results/{rid}/feedback", json={"verdict": "good"}))["references"]["images"] == 3
        calibration = ok(c.post("/v1/profiles/default/calibrate", json={"false_alarm_rate": 0.3}))
        assert (calibration["good_parts"], calibration["defects"]) == (3, 0)


def test_a_verdict_whose_bank_change_fails_is_not_recorded(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 10: the verdict and its bank change commit together: a failure in between leaves neither."""
    with station_client(tmp_path / "state") as c:
        ok(c.post("/v1/references", files=files(goods(shared_data, n=2))))
        rid = _result(c, probes(shared_data)[0])
        station = _station(c)
        assert station.store is not None
        version = station.profile("default").version

        def full(data: bytes) -> str:
            raise DiskFull("disk full (test)")

        monkeypatch.setattr(station.store, "put", full)
        assert c.post(f"/v1/results/{rid}/feedback", json={"verdict": "good"}).status_code == 507
        monkeypatch.undo()
        assert ok(c.get(f"/v1/results/{rid}"))["feedback"] == []
        assert ok(c.get("/v1/profiles/default"))["references"] == 2
        assert station.profile("default").version == version
        assert ok(c.post(f"/v1/results/{rid}/feedback", json={"verdict": "good"}))["references"]["images"] == 3
        assert [f["verdict"] for f in ok(c.get(f"/v1/results/{rid}"))["feedback"]] == ["good"]


def test_a_model_change_in_a_new_process_rebuilds_the_bank_from_the_stored_parts(
    tmp_path: Path, shared_data: Path
) -> None:
    """Finding 11: the profile's model changes after a restart (no detector in memory): its bank is rebuilt with the
    new model from the stored good parts, not dropped; going back to the old model gives the old bank back."""
    state = tmp_path / "state"
    with station_client(state) as c:
        ok(c.post("/v1/references", files=files(goods(shared_data, n=2))))
        old_bank = _station(c).detector("default").references
        assert old_bank is not None
    station = Station.open(base_run(), state)
    try:
        old_model = station.profile("default").model_changes
        station.put_profile("default", {"model_changes": (*old_model[:-1], ("image_size", 98))})
        det = station.detector("default")
        assert det.references is not None and det.references.images == 2
        assert station.profile("default").bank_sha256 is not None
        assert station.reference_count("default") == 2
        station.put_profile("default", {"model_changes": old_model})
        back = station.detector("default").references
        assert back is not None and back.content_sha256() == old_bank.content_sha256()
    finally:
        assert station.engine is not None
        station.engine.dispose()
    station = Station.open(base_run(), state)  # and what was committed is what a new process finds
    try:
        again = station.detector("default").references
        assert again is not None and again.content_sha256() == old_bank.content_sha256()
    finally:
        assert station.engine is not None
        station.engine.dispose()


def test_a_failed_calibrate_leaves_the_bank_and_thresholds_as_they_were(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 11: a good part that cannot be scored ends calibrate with its error, and the profile's own bank is
    back in place (not one of leave-one-out's)."""
    with station_client(tmp_path / "state") as c:
        ok(c.post("/v1/references", files=files(goods(shared_data, n=3))))
        station = _station(c)
        det = station.detector("default")
        assert det.references is not None
        bank_id, thresholds = det.references.id, station.profile("default").thresholds
        calls: list[Any] = []
        real = det.predict_many

        def second_fails(images: Any) -> Any:
            calls.append(images)
            if len(calls) == 2:
                raise KanoclipError("this part cannot be scored (test)")
            return real(images)

        monkeypatch.setattr(det, "predict_many", second_fails)
        with pytest.raises(KanoclipError, match="cannot be scored"):
            station.calibrate("default", 0.3)
        monkeypatch.undo()
        assert det.references is not None and det.references.id == bank_id
        assert station.profile("default").thresholds == thresholds


def test_a_profile_created_again_starts_without_the_old_verdicts(tmp_path: Path, shared_data: Path) -> None:
    """Finding 14: verdicts belong to the profile they were given on, not to its name."""
    with station_client(tmp_path / "state") as c:
        ok(c.post("/v1/profiles", json={"name": "line2"}))
        ok(c.post("/v1/profiles/line2/references", files=files(goods(shared_data, n=2))))
        old = _result(c, probes(shared_data)[1], "line2")
        ok(c.post(f"/v1/results/{old}/feedback", json={"verdict": "defect"}))
        ok(c.delete("/v1/profiles/line2"))
        ok(c.post("/v1/profiles", json={"name": "line2"}))
        ok(c.post("/v1/profiles/line2/references", files=files(goods(shared_data, n=2))))
        calibration = ok(c.post("/v1/profiles/line2/calibrate", json={"false_alarm_rate": 0.3}))
        assert (calibration["good_parts"], calibration["defects"]) == (2, 0)
        # a verdict now on the deleted profile's result is recorded, but teaches the new profile nothing
        ok(c.post(f"/v1/results/{old}/feedback", json={"verdict": "good"}))
        assert ok(c.get("/v1/profiles/line2"))["references"] == 2


def test_the_migration_keeps_profiles_and_verdicts_and_gives_each_verdict_its_profile(tmp_path: Path) -> None:
    """Revision 0003 with a profile, a result recorded under it and one recorded before it (a profile of the same
    name, deleted since), each with a verdict; at head the rows are kept, the profile has a uid and only the
    verdict on its own result teaches it."""
    from alembic import command
    from sqlalchemy import select

    from kanoclip.station import db

    url = db.database_url(tmp_path)
    engine = db.create(url)
    command.upgrade(db._alembic_config(engine), "0003")  # type: ignore[arg-type]
    with engine.begin() as c:
        c.exec_driver_sql(
            "INSERT INTO profiles (name, engine, model_changes, thresholds, version, created_at, updated_at) "
            "VALUES ('p', 'torch', '[]', '{}', 1, 10.0, 10.0)"
        )
        for rid, created in ((1, 5.0), (2, 20.0)):
            c.exec_driver_sql(
                "INSERT INTO results (id, created_at, profile, source, stored_bytes) "
                f"VALUES ({rid}, {created}, 'p', 'a.png', 0)"
            )
            c.exec_driver_sql(
                f"INSERT INTO feedback (result_id, verdict, created_at) VALUES ({rid}, 'defect', {created + 1})"
            )
    engine.dispose()
    upgraded = db.connect(url)
    with upgraded.connect() as c:
        (uid,) = c.execute(select(db.profiles.c.uid)).one()
        verdicts = dict(c.execute(select(db.feedback.c.result_id, db.feedback.c.profile_uid)).all())
    upgraded.dispose()
    assert len(uid) == 32 and verdicts == {1: None, 2: uid}


def test_two_instances_adding_good_parts_keep_both(tmp_path: Path, shared_data: Path) -> None:
    """Finding 12: a bank save is conditional on the version its instance read, and retried on the newer one when
    another instance saved in between: neither instance's parts are lost, and neither request fails."""
    parts, shots = goods(shared_data, n=4), probes(shared_data)
    with station_client(tmp_path / "state") as a, station_client(tmp_path / "state") as b:
        ok(a.post("/v1/references", files=files(parts[:2])))
        ok(b.get("/v1/references"))  # b reads the profile at this version ...
        ok(a.post("/v1/references", files=files(parts[2:3])))  # ... which a then changes
        answer = ok(b.post("/v1/references", files=files(parts[3:])))  # b's save meets a's newer version
        assert answer["images"] == 4
        # the same through verdicts: each instance marks a different result good, b again from an older version
        rid_a, rid_b = _result(a, shots[1]), _result(b, shots[2])
        ok(a.post(f"/v1/results/{rid_a}/feedback", json={"verdict": "good"}))
        assert ok(b.post(f"/v1/results/{rid_b}/feedback", json={"verdict": "good"}))["references"]["images"] == 6
        held = {s["sha256"] for s in _station(b).detector("default").references.sources}
        ok(a.get("/v1/profiles/default"))
        stored = _station(a)._banks.images("default")
    wanted = {sha256_of(p.read_bytes()) for p in [*parts, shots[1], shots[2]]}
    assert held == wanted
    assert {sha256_of(data) for _, data in stored} == wanted
