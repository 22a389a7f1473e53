"""No file or class name a client chooses reaches a spreadsheet as a formula (#30, finding 21): every CSV kanoclip
writes quotes cells that start with =, +, -, @, tab or CR (OWASP), and reads its own scores.csv back unchanged."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pytest

from kanoclip.cli import main
from kanoclip.inference.outputs import RunFolder
from tests.support.station import files, ok, probes, station_client

REPO = Path(__file__).resolve().parents[2]
TINY = ["--preset", "kanoclip-tiny", "--workers", "0", "--device", "cpu"]
NAME = "=SUM(1,2)+HYPERLINK(x)"  # a formula a file or an upload may be named


def test_a_formula_file_name_is_quoted_in_scores_csv_and_a_rerun_reads_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(REPO / "examples/parts/good/good_0.png", tmp_path / f"{NAME}.png")
    shutil.copy(REPO / "examples/parts/good/good_1.png", tmp_path / "@plain.png")
    monkeypatch.chdir(tmp_path)  # the files given by their own names, as a user in that folder would
    inputs, out = [f"{NAME}.png", "@plain.png"], tmp_path / "out"
    assert main(["detect", *inputs, *TINY, "--out", str(out)]) == 0
    rows = {r["path"]: r for r in csv.DictReader((out / "scores.csv").open())}
    assert set(rows) == {f"'{NAME}.png", "'@plain.png"}
    assert all(r["map"].startswith("maps/") for r in rows.values())  # a map path starts with its folder, unquoted
    assert set(RunFolder(out).scored_rows(False)) == {f"{NAME}.png", "@plain.png"}
    before = (out / "scores.csv").read_bytes()
    assert main(["detect", *inputs, *TINY, "--out", str(out)]) == 0  # the same run: resumed, nothing redone
    assert (out / "scores.csv").read_bytes() == before


def test_a_formula_upload_name_is_quoted_in_the_history_csv(tmp_path: Path, shared_data: Path) -> None:
    with station_client(tmp_path / "state") as c:
        image = probes(shared_data)[0].read_bytes()
        ok(c.post("/v1/detect", files=[("files", (NAME, image)), *files(probes(shared_data)[1:2])]))
        text = c.get("/v1/results", params={"format": "csv"}).text
    sources = [r["source"] for r in csv.DictReader(io.StringIO(text))]
    assert f"'{NAME}" in sources and probes(shared_data)[1].name in sources
