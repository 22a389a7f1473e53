"""#34 in the station: each result's defect type in the answers, the history and its CSV; a typed verdict becomes an
example that changes the next typing; the Pareto endpoint counts what the history holds; the per-type counter; the
migration keeps an existing state's rows."""

from __future__ import annotations

import collections
import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from kanoclip.station import db
from kanoclip.station.serve import ServeConfig, create_app
from kanoclip.station.station import Station
from tests.support.migration import check_upgraded, fill_at_0008
from tests.support.station import BOTTLE, base_run, files, ok

SHIPPED = {"broken_large", "broken_small", "contamination", "unknown"}


@contextmanager
def bottle_station(state: Path) -> Iterator[TestClient]:
    """A station whose profile `bottle` judges every part anomalous (threshold -1): each one is typed."""
    station = Station.open(base_run(), state)
    station.configure("bottle", base_run(class_name="bottle", image_threshold=-1.0))
    try:
        with TestClient(create_app(station, ServeConfig(), "bottle"), base_url="http://127.0.0.1") as client:
            yield client
    finally:
        assert station.engine is not None
        station.engine.dispose()


def defects(shared_data: Path) -> list[Path]:
    test = shared_data / BOTTLE / "test"
    return [test / kind / f"00{i}.png" for kind in ("broken_large", "broken_small", "contamination") for i in (0, 1)]


def detect(c: TestClient, paths: list[Path]) -> list[dict[str, Any]]:
    return list(ok(c.post("/v1/profiles/bottle/detect", files=files(paths)))["results"])


def test_types_are_answered_recorded_and_counted_as_the_history_holds(shared_data: Path, tmp_path: Path) -> None:
    with bottle_station(tmp_path / "st") as c:
        answers = detect(c, defects(shared_data))
        assert all(a["label"] == 1 and a["defect_type"] in SHIPPED and 0 < a["defect_type_p"] <= 1 for a in answers)
        rows = ok(c.get("/v1/results?profile=bottle"))["results"]
        assert sorted(r["defect_type"] for r in rows) == sorted(a["defect_type"] for a in answers)
        history = collections.Counter(r["defect_type"] for r in rows)

        pareto = ok(c.get("/v1/profiles/bottle/defect-types"))
        counts = {t["type"]: t["count"] for t in pareto["types"]}
        assert {k: v for k, v in counts.items() if v} == dict(history) and pareto["total"] == len(rows)
        assert set(counts) >= SHIPPED - {"unknown"}  # types not seen count 0
        shown = [t["count"] for t in pareto["types"]]
        assert shown == sorted(shown, reverse=True)
        assert pareto["types"][-1]["cumulative"] == 1.0
        assert ok(c.get("/v1/profiles/bottle/defect-types?since=2099-01-01"))["total"] == 0

        table = list(csv.DictReader(io.StringIO(c.get("/v1/results?profile=bottle&format=csv").text)))
        assert sorted(r["defect_type"] for r in table) == sorted(history.elements())
        metrics = c.get("/metrics").text
        for kind, n in history.items():
            assert f'kanoclip_defect_types_total{{profile="bottle",type="{kind}"}} {float(n)}' in metrics


def test_a_typed_verdict_becomes_an_example_and_changes_the_next_typing(shared_data: Path, tmp_path: Path) -> None:
    image = [defects(shared_data)[0]]
    with bottle_station(tmp_path / "st") as c:
        first = detect(c, image)[0]
        assert first["defect_type"] in SHIPPED
        answer = ok(c.post(f"/v1/results/{first['result_id']}/feedback", json={"verdict": "defect", "type": "dent"}))
        assert answer["type"] == "dent"
        again = detect(c, image)[0]
        assert again["defect_type"] == "dent"
        assert ok(c.get(f"/v1/results/{first['result_id']}"))["feedback"][-1]["defect_type"] == "dent"
        # a later verdict on the image replaces it: it is no example any more
        ok(c.post(f"/v1/results/{first['result_id']}/feedback", json={"verdict": "defect"}))
        assert detect(c, image)[0]["defect_type"] in SHIPPED
        wrong = c.post(f"/v1/results/{first['result_id']}/feedback", json={"verdict": "good", "type": "dent"})
        assert wrong.status_code == 400 and "goes with a 'defect' verdict" in wrong.json()["detail"]
        reserved = c.post(f"/v1/results/{first['result_id']}/feedback", json={"verdict": "defect", "type": "unknown"})
        assert reserved.status_code == 400 and "cannot name a type" in reserved.json()["detail"]


def test_examples_survive_a_restart_and_go_with_their_profile(shared_data: Path, tmp_path: Path) -> None:
    image = [defects(shared_data)[2]]
    state = tmp_path / "st"
    with bottle_station(state) as c:
        rid = detect(c, image)[0]["result_id"]
        ok(c.post(f"/v1/results/{rid}/feedback", json={"verdict": "defect", "type": "dent"}))
    with bottle_station(state) as c:
        assert detect(c, image)[0]["defect_type"] == "dent"  # rebuilt from the rows at start
        station: Station = c.app.state.station  # type: ignore[attr-defined]
        assert station.engine is not None
        ok(c.post("/v1/profiles", json={"name": "other", "class_name": "bottle"}))
        other = ok(c.post("/v1/profiles/other/detect", files=files(image)))["results"][0]["result_id"]
        ok(c.post(f"/v1/results/{other}/feedback", json={"verdict": "defect", "type": "scratch"}))
        with station.engine.connect() as conn:
            assert len(conn.execute(select(db.defect_examples)).all()) == 2
        ok(c.delete("/v1/profiles/other"))
        with station.engine.connect() as conn:
            assert [r.type for r in conn.execute(select(db.defect_examples))] == ["dent"]  # bottle's stays


def test_the_migration_adds_the_columns_without_losing_rows_on_sqlite(tmp_path: Path) -> None:
    url = db.database_url(tmp_path)
    engine = db.create(url)
    fill_at_0008(engine)
    engine.dispose()
    upgraded = db.connect(url)
    check_upgraded(upgraded)
    upgraded.dispose()
