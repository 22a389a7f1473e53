"""A calibration shares the forward thread (#30, finding 23): a detect on profile A sent during a calibrate of
profile B waits for at most 2 of the calibration's steps, not for all of them (it once waited for the whole 51 s of
a 54-image calibrate). The profile being calibrated keeps its own bank for the detects in between."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from kanoclip.inference.detector import Detector
from tests.support.station import files, goods, ok, probes, station_client

STEP_S = 0.15  # each of B's leave-one-out passes made this slow, so a detect surely arrives mid-calibration


def _logged(det: Detector, name: str, log: list[str], delay: float = 0.0) -> None:
    """`det.predict_many` that records, in order, which profile ran a forward pass."""
    real = det.predict_many

    def predict_many(images: Any) -> Any:
        log.append(name)
        time.sleep(delay)
        return real(images)

    det.predict_many = predict_many  # type: ignore[method-assign]


def test_a_detect_waits_for_at_most_two_steps_of_another_profiles_calibrate(tmp_path: Path, shared_data: Path) -> None:
    parts = goods(shared_data, n=8)
    with station_client(tmp_path / "state") as c:
        for name in ("a", "b"):
            ok(c.post("/v1/profiles", json={"name": name}))
        ok(c.post("/v1/profiles/b/references", files=files(parts)))
        ok(c.post("/v1/profiles/a/detect", files=files(probes(shared_data)[:1])))
        station = c.app.state.station  # type: ignore[attr-defined]
        log: list[str] = []
        _logged(station.detector("a"), "a", log)
        _logged(station.detector("b"), "b", log, STEP_S)
        b_bank = station.detector("b").references.id

        answers: list[Any] = []
        calibrating = threading.Thread(
            target=lambda: answers.append(c.post("/v1/profiles/b/calibrate", json={"false_alarm_rate": 0.2}))
        )
        calibrating.start()
        deadline = time.monotonic() + 30
        while log.count("b") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.count("b") >= 2, "the calibration never started its leave-one-out passes"
        sent = len(log)
        ok(c.post("/v1/profiles/a/detect", files=files(probes(shared_data)[1:2])))
        # and a detect on B itself, mid-calibration, is scored against B's own bank
        b_answer = ok(c.post("/v1/profiles/b/detect", files=files(probes(shared_data)[1:2])))
        calibrating.join(60)
        assert not calibrating.is_alive()
        calibration = ok(answers[0])

    waited = log[sent:].index("a")  # B's passes that ran between the detect's sending and its own pass
    assert waited <= 2, f"the detect on A waited for {waited} of B's calibration passes: {log}"
    assert log.count("b") >= len(parts) + 1  # B's calibration really went on after it (and B's own detect)
    assert calibration["good_parts"] == len(parts)
    assert b_answer["results"][0]["references"]["id"] == b_bank
