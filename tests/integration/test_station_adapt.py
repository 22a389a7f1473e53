"""#32 in the station: adapt as a job in a worker process, model versions with a shadow evaluation on the labelled
history (checked against sklearn), promote and rollback, cancel, and the limits of the API."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score
from sqlalchemy import select

from kanoclip.station import db
from kanoclip.station.backup import backup
from kanoclip.station.check import check
from kanoclip.station.station import Station
from kanoclip.station.store import BlobStore
from kanoclip.station.versions import checkpoint_of
from tests.support.station import HAZELNUT, base_run, files, ok, station_client


def hazelnut(shared_data: Path) -> tuple[list[Path], list[Path], list[Path]]:
    root = shared_data / HAZELNUT
    return (
        sorted((root / "train" / "good").glob("*"))[:4],
        sorted((root / "test" / "good").glob("*"))[:3],
        sorted((root / "test" / "colour").glob("*"))[:3],
    )


def labelled(client: Any, goods: list[Path], defects: list[Path]) -> list[int]:
    """Each image detected once and given its verdict; the result ids in order."""
    ids = []
    for path, verdict in [(p, "good") for p in goods] + [(p, "defect") for p in defects]:
        rid = ok(client.post("/v1/detect", files=files([path])))["results"][0]["result_id"]
        ok(client.post(f"/v1/results/{rid}/feedback", json={"verdict": verdict}))
        ids.append(rid)
    return ids


def wait_for(client: Any, job: dict[str, Any], timeout: float = 240) -> dict[str, Any]:
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        job = ok(client.get(job["url"]))
        seen.append((job["phase"], job["step"]))
        if job["state"] != "running":
            return {**job, "seen": seen}
        time.sleep(0.2)
    raise AssertionError(f"the job did not end: {job}")


def started(client: Any, body: dict[str, Any], profile: str = "default") -> dict[str, Any]:
    response = client.post(f"/v1/profiles/{profile}/adapt", json=body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def scores(client: Any, paths: list[Path]) -> list[float]:
    return [r["score"] for r in ok(client.post("/v1/detect", files=files(paths)))["results"]]


def test_adapt_job_version_measured_like_sklearn_promote_rollback(shared_data: Path, tmp_path: Path) -> None:
    refs, test_goods, defects = hazelnut(shared_data)
    with station_client(tmp_path / "st") as c:
        ok(c.post("/v1/profiles/default/references", files=files(refs)))
        ids = labelled(c, test_goods, defects)
        probe = [defects[0], test_goods[0]]
        before = scores(c, probe)

        job = c.post("/v1/profiles/default/adapt", json={"max_steps": 2, "synth": ["cutpaste"]})
        assert job.status_code == 202, job.text
        assert job.json()["url"] == f"/v1/jobs/{job.json()['id']}"
        assert scores(c, probe) == before  # nothing changes the current model while the job runs
        done = wait_for(c, job.json())
        assert done["state"] == "done", done["log"]
        assert done["progress"] == 1.0 and done["steps"] == 2 and done["version"] == 1
        assert done["log"], "the job's log tail is shown"

        listing = ok(c.get("/v1/profiles/default/models"))
        assert listing["current"] is None and [v["version"] for v in listing["versions"]] == [1]
        version = ok(c.get("/v1/profiles/default/models/1"))
        assert version["parent"] == {"version": None, "model": version["parent"]["model"]}
        assert len(version["parts"]) == 4 + 3  # the references and the parts marked good, each once
        assert scores(c, probe) == before  # still not promoted

        # the shadow numbers against sklearn on the same history rows
        rows = version["shadow"]
        assert [r[0] for r in rows] == ids
        y = np.array([r[1] for r in rows])
        assert list(y) == [0] * len(test_goods) + [1] * len(defects)
        for column, which in ((2, "new"), (3, "current")):
            s = np.array([r[column] for r in rows])
            n = version["numbers"][which]
            assert n["image_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
            predicted = s >= n["threshold"]
            assert n["f1"] == pytest.approx(f1_score(y, predicted, zero_division=0.0), abs=1e-12)
            tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
            assert (n["tn"], n["fp"], n["fn"], n["tp"]) == (tn, fp, fn, tp)
            assert (n["rows"], n["good"], n["defect"]) == (6, 3, 3)
            # the rows the new model was not trained on: the parts marked good are its training data
            unseen = version["numbers"]["unseen"][which]
            assert (unseen["rows"], unseen["good"], unseen["defect"]) == (3, 0, 3) and unseen["image_auroc"] is None
            assert unseen["tp"] == int((s[y == 1] >= n["threshold"]).sum())

        # the new model's shadow scores are what it gives once current, for rows that are not good parts
        promoted = ok(c.post("/v1/profiles/default/models/1/promote"))
        assert promoted["model_version"] == 1 and promoted["checkpoint"].startswith("state:models/")
        assert promoted["thresholds"]["image_threshold"] == version["thresholds"]["image_threshold"]
        after = scores(c, probe)
        assert after != before
        defect_row = rows[len(test_goods)]
        assert after[0] == pytest.approx(defect_row[2], rel=1e-5)
        assert ok(c.get("/v1/profiles/default/models"))["current"] == 1

        # a backup of the running station holds the version folders its rows name, and opens with version 1 in use
        backup(tmp_path / "st", tmp_path / "bk")
        copy = Station.open(base_run(), tmp_path / "bk")
        assert copy.profile("default").model_version == 1
        assert str(copy.detector("default").checkpoint).startswith(str(tmp_path / "bk" / "models"))
        assert copy.engine is not None and check(copy.engine, BlobStore(tmp_path / "bk")).clean
        copy.engine.dispose()

        back = ok(c.post("/v1/profiles/default/rollback"))
        assert back["model_version"] is None
        assert scores(c, probe) == before  # exactly
        again = c.post("/v1/profiles/default/rollback")
        assert again.status_code == 409 and "no promote to roll back" in again.json()["detail"]


def test_cancel_stops_the_worker_and_leaves_nothing(shared_data: Path, tmp_path: Path) -> None:
    refs, _, _ = hazelnut(shared_data)
    state = tmp_path / "st"
    with station_client(state, max_jobs=2) as c:
        ok(c.post("/v1/profiles/default/references", files=files(refs)))
        job = started(c, {"max_steps": 100000})
        busy = c.post("/v1/profiles/default/adapt", json={"max_steps": 1})
        assert busy.status_code == 409 and "running job already" in busy.json()["detail"]
        deadline, seen = time.monotonic() + 120, ok(c.get(job["url"]))
        while not (seen["phase"] == "training" and seen["step"] >= 1) and time.monotonic() < deadline:
            time.sleep(0.2)
            seen = ok(c.get(job["url"]))
        # its progress shows while it trains: the step of the steps it will take, and the log's tail
        assert seen["state"] == "running" and 0 < seen["step"] < seen["steps"] and 0 < seen["progress"] < 1, seen
        assert any("train" in line for line in seen["log"]), seen["log"]
        cancelled = c.delete(job["url"])
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        again = c.delete(job["url"])
        assert again.status_code == 409 and "ended already" in again.json()["detail"]
        deadline = time.monotonic() + 30
        app = c.app
        while app.state.workers.running and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.1)
        assert not app.state.workers.running  # type: ignore[attr-defined]
        assert ok(c.get(job["url"]))["state"] == "cancelled"
        assert ok(c.get("/v1/profiles/default/models"))["versions"] == []
    job_folder = state / "jobs" / job["id"]
    assert sorted(p.name for p in job_folder.iterdir()) == ["job.json", "log.txt"]
    assert not (state / "models").exists() or not any((state / "models").rglob("*.safetensors"))


def test_refusals(shared_data: Path, tmp_path: Path) -> None:
    refs, _, _ = hazelnut(shared_data)
    with station_client(tmp_path / "st") as c:
        few = c.post("/v1/profiles/default/adapt", json={"max_steps": 1})
        assert few.status_code == 409 and "0 good part(s): adapt needs at least 2" in few.json()["detail"]
        ok(c.post("/v1/profiles/default/references", files=files(refs[:2])))
        for body, where in (
            ({"synth": ["laser"]}, "synth"),
            ({"max_steps": 0}, "max_steps"),
            ({"val_fraction": 1.5}, "val_fraction"),
            ({"path": "/etc"}, "path"),
        ):
            bad = c.post("/v1/profiles/default/adapt", json=body)
            assert bad.status_code == 422 and where in str(bad.json()["detail"][0]["loc"])
        assert c.get("/v1/profiles/default/models/7").status_code == 404
        assert c.post("/v1/profiles/default/models/7/promote").status_code == 404
        assert c.get("/v1/jobs/nope").status_code == 404
        missing = c.post("/v1/profiles/ghost/adapt", json={})
        assert missing.status_code == 404


def test_versions_beyond_keep_go_but_the_current_one_and_rollbacks_stay(tmp_path: Path) -> None:
    """Pruning to `keep`: the newest versions, plus the current one and those a rollback returns to; rows first, then
    folders. Versions recorded as a finished job records them, on folders written by the test."""
    state = tmp_path / "st"
    station = Station.open(base_run(), state)
    station.configure("default", base_run())
    assert station.engine is not None
    jobs = {}
    for _ in range(6):
        p = station.profile("default")
        job_id = station.jobs.start("adapt", "default", p.uid, {})
        station.jobs.folders.model(p.uid, job_id).mkdir(parents=True)
        (station.jobs.folders.model(p.uid, job_id) / "model.safetensors").write_bytes(b"w")
        empty: dict[str, Any] = {k: {} for k in ("parent", "config", "numbers")}
        with station.engine.begin() as c:
            assert station.jobs.end(job_id, "done", c=c)
            jobs[
                station.versions.record(
                    c, p, job_id, {**empty, "model_changes": [], "parts": [], "shadow": [], "thresholds": {}}
                )
            ] = job_id
    # as if 2 was promoted, then 4 (rollback returns to 2, then to the given model), and another profile took 1's
    p = station.profile("default")

    def entry(n: int | None) -> dict[str, Any]:
        return {"version": n, "model": {"checkpoint": n and checkpoint_of(p.uid, jobs[n])}}

    with station.engine.begin() as c:
        values = {"checkpoint": checkpoint_of(p.uid, jobs[4]), "model_version": 4, "rollback": [entry(None), entry(2)]}
        c.execute(db.profiles.update().where(db.profiles.c.name == "default").values(**values))
        other = {**p.row(), "name": "other", "uid": "o" * 32, "checkpoint": checkpoint_of(p.uid, jobs[1])}
        c.execute(db.profiles.insert().values(**other))
    assert station.versions.prune(p, keep=2) == [jobs[3]]
    assert [v["version"] for v in station.versions.all(p)] == [6, 5, 4, 2, 1]
    uid = p.uid
    assert sorted(f.name for f in (state / "models" / uid).iterdir()) == sorted(jobs[n] for n in (1, 2, 4, 5, 6))
    assert check(station.engine, BlobStore(state)).clean
    shutil.rmtree(state / "models" / uid / jobs[5])
    report = check(station.engine, BlobStore(state))
    assert [owner for owner, _ in report.dangling] == ["profile 'default''s model version 5"]
    station.changed_profiles()
    station.delete_profile("default")  # its versions go with it, but for the folder the other profile uses
    assert [f.name for f in (state / "models" / uid).iterdir()] == [jobs[1]]
    with station.engine.connect() as c:
        assert c.execute(select(db.model_versions)).first() is None
    station.engine.dispose()
