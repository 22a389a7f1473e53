"""The station against a plain model of what it promises (#30): a Hypothesis state machine of detects, verdicts
(repeated and reversed), restarts and retention on SQLite, with invariants checked after every step:
each acknowledged result is stored once, no row points at a missing file, the bank holds exactly the parts whose
latest verdict is "good", and calibration never counts a part both ways."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.support.station import assert_every_row_has_its_files, files, ok, station_client

REPO = Path(__file__).resolve().parents[2]
IMAGES = sorted((REPO / "examples/parts").rglob("*.png"))  # 4 different parts


class StationModel(RuleBasedStateMachine):
    """The real station (behind its HTTP app) beside a dict-and-set model of what it was told."""

    def __init__(self) -> None:
        super().__init__()
        self.state = Path(mkdtemp(prefix="station-model-")) / "state"
        self.stack = ExitStack()
        self.client: Any = None
        self.results: dict[int, int] = {}  # acknowledged result id -> image index
        self.latest: dict[int, str] = {}  # image index -> the verdict given last on any of its results
        self.verdicts: list[tuple[int, int, str]] = []  # (result id, image index, verdict) in the order given

    @initialize()
    def start(self) -> None:
        self.client = self.stack.enter_context(station_client(self.state))

    def teardown(self) -> None:
        self.stack.close()

    @property
    def station(self) -> Any:
        return self.client.app.state.station

    @rule(image=st.integers(0, len(IMAGES) - 1))
    def detect(self, image: int) -> None:
        answer = ok(self.client.post("/v1/detect", files=files([IMAGES[image]])))
        (result,) = answer["results"]
        assert result["result_id"] not in self.results
        self.results[result["result_id"]] = image

    @precondition(lambda self: bool(self.results))
    @rule(data=st.data(), verdict=st.sampled_from(["good", "defect", "ng", "ok"]))
    def verdict(self, data: st.DataObject, verdict: str) -> None:
        result = data.draw(st.sampled_from(sorted(self.results)))
        ok(self.client.post(f"/v1/results/{result}/feedback", json={"verdict": verdict}))
        word = "good" if verdict in ("good", "ok") else "defect"
        self.latest[self.results[result]] = word
        self.verdicts.append((result, self.results[result], word))

    @rule()
    def restart(self) -> None:
        """The process ends and starts again on the same state."""
        self.stack.close()
        self.stack = ExitStack()
        self.client = self.stack.enter_context(station_client(self.state))

    @precondition(lambda self: len(self.results) >= 2)
    @rule()
    def retention_by_age(self) -> None:
        """The oldest result ages past --keep-days and goes; a good part it taught stays in the bank."""
        oldest = min(self.results)
        from sqlalchemy import update

        from kanoclip.station import db

        with self.station.engine.begin() as c:
            c.execute(update(db.results).where(db.results.c.id == oldest).values(created_at=time.time() - 7200))
        assert self.station.prune(1 / 24, None) == 1
        del self.results[oldest]

    @invariant()
    def every_acknowledged_result_is_stored_once(self) -> None:
        if self.client is None:
            return
        rows = ok(self.client.get("/v1/results", params={"limit": 1000}))["results"]
        assert sorted(r["id"] for r in rows) == sorted(self.results)

    @invariant()
    def no_row_points_at_a_missing_file(self) -> None:
        if self.client is not None:
            assert_every_row_has_its_files(self.state, None)

    @invariant()
    def the_bank_holds_exactly_the_parts_last_called_good(self) -> None:
        if self.client is None:
            return
        good = sum(1 for v in self.latest.values() if v == "good")
        assert self.station.reference_count("default") == good
        bank = self.station.detector("default").references
        assert (bank.images if bank else 0) == good

    @invariant()
    def no_part_is_counted_both_ways(self) -> None:
        if self.client is None:
            return
        labelled = self.station._teaching.labelled("default")
        assert not set(labelled["good"]) & set(labelled["defect"])
        # Calibration reads verdicts through their results: a pruned result's verdict no longer counts there (the
        # bank, above, keeps its good parts apart from the results).
        kept = {image: word for result, image, word in self.verdicts if result in self.results}
        assert len(labelled["defect"]) == sum(1 for word in kept.values() if word == "defect")


StationModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("KANOCLIP_MODEL_EXAMPLES", "8")),
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: each example builds a model (5 min+)
)
test_the_station_keeps_its_promises_against_a_plain_model = pytest.mark.timeout(600)(StationModel.TestCase)
