"""What a client or a user types into the station is read exactly or refused with a 4xx or a clear error (#30,
findings 19, 20 and 22)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from kanoclip.cli import main
from kanoclip.errors import ConfigError
from kanoclip.station.db import check_profile_name
from kanoclip.station.results import parse_time
from tests.support.station import files, ok, probes, station_client


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20261201", utc(2026, 12, 1)),  # finding 19: once read as 20,261,201 seconds after 1970
        ("2026-12-01", utc(2026, 12, 1)),
        ("20261201T0830Z", utc(2026, 12, 1, 8, 30)),
        ("20261201T083015+0100", utc(2026, 12, 1, 7, 30, 15)),
        ("2026-12-01T08:30:15.250Z", utc(2026, 12, 1, 8, 30, 15) + 0.25),
        ("2026-12-01T08:30-05:00", utc(2026, 12, 1, 13, 30)),
        ("2026-12-01T08:30", utc(2026, 12, 1, 8, 30)),  # no zone: UTC
    ],
)
def test_since_reads_iso_8601_basic_and_extended_dates_and_times(text: str, expected: float) -> None:
    assert parse_time(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["nan", "inf", "1733000000", "yesterday", "2026-13-01", "20261201T2500", "12/01/2026"])
def test_anything_else_is_refused_with_a_clear_error(text: str) -> None:
    with pytest.raises(ConfigError, match="is not an ISO 8601 date or time"):
        parse_time(text)


def test_the_api_refuses_bad_times_huge_ids_and_nan_with_4xx(tmp_path: Path, shared_data: Path) -> None:
    with station_client(tmp_path / "state") as c:
        ok(c.post("/v1/detect", files=files(probes(shared_data)[:1])))
        assert c.get("/v1/results", params={"since": "nan"}).status_code == 400
        assert c.get("/v1/results", params={"since": "20261201"}).status_code == 200
        huge = 2**63
        assert c.get("/v1/results", params={"cursor": huge}).status_code == 422  # finding 20: once a 500
        assert c.get(f"/v1/results/{huge}").status_code == 422
        assert c.post(f"/v1/results/{huge}/feedback", json={"verdict": "good"}).status_code == 422
        assert c.get(f"/v1/results/{huge - 1}").status_code == 404
        body = '{"false_alarm_rate": NaN}'
        r = c.post("/v1/profiles/default/calibrate", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422


def test_history_since_basic_format_filters_instead_of_returning_everything(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    with station_client(state) as c:
        ok(c.post("/v1/detect", files=files(probes(shared_data)[:2])))
    capsys.readouterr()
    assert main(["history", str(state), "--since", "29991231"]) == 0
    assert "no results match" in capsys.readouterr().out
    assert main(["history", str(state), "--since", "tomorrow"]) == 2
    assert "is not an ISO 8601 date or time" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["a..b", "..", "a/b", ".hidden", "", "x" * 65])
def test_a_profile_name_with_dot_dot_or_a_slash_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="is not a profile name"):
        check_profile_name(name)


def test_profiles_are_capped_and_a_deleted_profiles_series_go_with_it(tmp_path: Path, shared_data: Path) -> None:
    """Finding 8: 60 profiles over HTTP each added series for ever."""
    with station_client(tmp_path / "state", max_profiles=3) as c:
        for name in ("p1", "p2"):
            ok(c.post("/v1/profiles", json={"name": name}))
            ok(c.post(f"/v1/profiles/{name}/detect", files=files(probes(shared_data)[:1])))
        r = c.post("/v1/profiles", json={"name": "p3"})
        assert r.status_code == 409 and "--max-profiles" in r.json()["detail"]
        assert 'profile="p1"' in c.get("/metrics").text
        ok(c.delete("/v1/profiles/p1"))
        metrics = c.get("/metrics").text
        assert 'profile="p1"' not in metrics and 'profile="p2"' in metrics
        ok(c.post("/v1/profiles", json={"name": "p3"}))  # room again


def test_history_shows_each_results_verdict_as_its_csv_does(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 24: the table left out the verdicts the CSV and the API have."""
    state = tmp_path / "state"
    with station_client(state) as c:
        ok(c.post("/v1/detect", files=files(probes(shared_data)[:2])))
        newest = ok(c.get("/v1/results"))["results"][0]
        ok(c.post(f"/v1/results/{newest['id']}/feedback", json={"verdict": "defect"}))
    capsys.readouterr()
    assert main(["history", str(state)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "verdict" in lines[0]
    row = next(line for line in lines if line.split()[0] == str(newest["id"]))
    assert row.split()[5] == "defect"
