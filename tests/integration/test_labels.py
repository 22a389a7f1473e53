"""One label vocabulary: every output says 0/1 or good/defect (`kanoclip.labels.Label`), never ok/ng, normal/anomalous
or NG/OK; the earlier words are still accepted where a user gives a label."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from kanoclip.cli import main
from kanoclip.inference.thresholds import Thresholds
from kanoclip.labels import Label
from tests.support.station import files, ok, probes, station_client

REPO = Path(__file__).resolve().parents[2]
TINY = ["--preset", "kanoclip-tiny", "--workers", "0", "--device", "cpu"]
WORDS = {"good", "defect"}
OLD = re.compile(r"\b(NG|OK|ng|ok|normal|anomalous|DEFECT)\b")


def test_label_parses_numbers_its_words_and_the_earlier_words() -> None:
    for value, label in [(0, Label.GOOD), (1, Label.DEFECT), ("1", Label.DEFECT), (True, Label.DEFECT)]:
        assert Label.parse(value) is label
    for word in ("good", "OK", "normal"):
        assert Label.parse(word) is Label.GOOD
    for word in ("defect", "ng", "Anomalous", "anomaly"):
        assert Label.parse(word) is Label.DEFECT
    assert (Label.GOOD.folder, Label.DEFECT.folder) == ("ok", "ng")
    with pytest.raises(ValueError, match="a label is good or defect"):
        Label.parse("maybe")


def test_detect_and_its_report_say_only_the_enums_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["detect", str(REPO / "examples/parts"), *TINY, "--threshold", "0.5", "--report", "2", "--out", str(out)]
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert rows and {r["label"] for r in rows} <= {str(int(v)) for v in Label}
    html = (out / "report.html").read_text()
    captions = re.findall(r"score [0-9.]+ (\w+)</", html)
    assert captions and set(captions) <= WORDS


def test_serve_history_metrics_and_verdicts_say_only_the_enums_values(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    with station_client(state) as c:
        c.app.state.station.set_thresholds("default", Thresholds(0.5))  # type: ignore[attr-defined]
        answers = ok(c.post("/v1/detect", files=files(probes(shared_data))))["results"]
        assert {a["label"] for a in answers} <= {0, 1}
        rows = ok(c.get("/v1/results"))["results"]
        verdict = ok(c.post(f"/v1/results/{rows[0]['id']}/feedback", json={"verdict": "ng"}))  # an earlier word
        assert verdict["verdict"] == "defect"
        verdict = ok(c.post(f"/v1/results/{rows[1]['id']}/feedback", json={"verdict": "good"}))
        assert verdict["verdict"] == "good"
        metrics = c.get("/metrics").text
    shown = set(re.findall(r'kanoclip_detections_total\{label="(\w+)"', metrics))
    assert shown and shown <= WORDS | {"unlabelled", "error"}
    assert main(["history", str(state)]) == 0
    printed = capsys.readouterr().out
    assert not OLD.search(printed)
    assert set(re.findall(r"\s(good|defect|error|-)\s", printed)) & WORDS
    assert main(["history", str(state), "--label", "ng", "--csv"]) == 0  # an earlier word, accepted
    assert all(r["label"] == "1" for r in csv.DictReader(capsys.readouterr().out.splitlines()))


def test_evaluate_says_good_and_defect(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(shared_data / "MVTec_AD"), *TINY, "--out", str(tmp_path / "e")]) == 0
    summary = [line for line in capsys.readouterr().out.splitlines() if "images (" in line]
    assert summary and all(re.search(r"\(\d+ good, \d+ defect\)", line) for line in summary)


def test_watch_counts_webhooks_and_sorting_say_only_the_enums_values(tmp_path: Path, shared_data: Path) -> None:
    import shutil

    import numpy as np

    from tests.support.streams import webhook_receiver
    from tests.support.watch import bottles, station_at, wait_for, watching

    inbox, good, bad = tmp_path / "inbox", tmp_path / "ok", tmp_path / "ng"
    inbox.mkdir()
    images = bottles(shared_data, 4)
    station = station_at(tmp_path / "state")
    scores = sorted(station.detector("default").predict(p)[0] for p in images)
    station.set_thresholds("default", Thresholds(float(np.median(scores))))
    for p in images:
        shutil.copy(p, inbox / f"{p.parent.name}_{p.name}")
    with webhook_receiver() as hook:
        sorting = {"ok_dir": good, "ng_dir": bad, "webhook": hook["url"], "webhook_on": "ng"}  # "ng": an earlier word
        with watching(station, [str(inbox)], **sorting) as watcher:
            wait_for(lambda: len(list(good.glob("*"))) + len(list(bad.glob("*"))) == 4, what="4 parts sorted")
            defects = len(list(bad.glob("*")))
            wait_for(lambda: len(hook["received"]) == defects, what="one POST per defect")
    assert set(watcher.counts) == {"scored", "defect", "failed", "skipped"} and watcher.counts["defect"] == defects
    assert {r["label"] for r in hook["received"]} <= {int(Label.DEFECT)}
    assert (good.name, bad.name) == (Label.GOOD.folder, Label.DEFECT.folder)
