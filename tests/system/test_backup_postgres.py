"""`kanoclip station backup` of a station whose rows live in PostgreSQL (#30): it once only printed a `pg_dump`
command for the user to run after the files were copied, so rows recorded in between named files the copy lacked.
Now it dumps first (one snapshot), then copies every file the database names; the dump restored with `pg_restore`
into a new database opens, with the copied folder, as a station with the same history, every row with its files."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from kanoclip.cli import main
from tests.support.postgres import throwaway_cluster
from tests.support.station import assert_every_row_has_its_files, files, ok, probes, station_client

pytestmark = pytest.mark.slow  # a PostgreSQL cluster


def test_a_postgresql_station_backed_up_under_load_restores_to_the_same_history(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, out = tmp_path / "state", tmp_path / "backup"
    stop = threading.Event()
    with throwaway_cluster() as cluster:
        url = cluster.new_database()
        with station_client(state, url) as c:
            first = ok(c.post("/v1/detect", files=files(probes(shared_data))))["results"]
            ok(c.post(f"/v1/results/{first[0]['result_id']}/feedback", json={"verdict": "good"}))

            def load() -> None:
                while not stop.is_set():
                    ok(c.post("/v1/detect", files=files(probes(shared_data)[1:2])))

            writer = threading.Thread(target=load)
            writer.start()
            try:
                assert main(["station", "backup", str(state), str(out), "--database", url]) == 0
            finally:
                stop.set()
                writer.join(timeout=60)
            original = {r["id"]: r for r in ok(c.get("/v1/results", params={"limit": 1000}))["results"]}
        said = capsys.readouterr().out
        assert "pg_restore" in said and (out / "station.pgdump").is_file()

        restored = cluster.new_database()
        name = restored.rsplit("/", 1)[1]
        where = ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", "kanoclip", "--dbname", name]
        subprocess.run(
            ["pg_restore", "--no-owner", *where, str(out / "station.pgdump")],
            check=True,
            capture_output=True,
            timeout=120,
        )
        assert assert_every_row_has_its_files(out, restored) > 0
        assert main(["station", "check", str(out), "--database", restored]) == 0
        with station_client(out, restored) as c:
            copied = ok(c.get("/v1/results", params={"limit": 1000}))["results"]
            assert len(copied) >= len(first) and all(original[r["id"]] == r for r in copied)
            verdicts = ok(c.get(f"/v1/results/{first[0]['result_id']}"))["feedback"]
            assert [v["verdict"] for v in verdicts] == ["good"]
            for r in copied:
                assert c.get(f"/v1/results/{r['id']}").status_code == 200
            assert ok(c.get("/v1/references"))["images"] == 1  # the good verdict's part, in the restored bank


def test_without_pg_dump_the_backup_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kanoclip.errors import ConfigError
    from kanoclip.station import backup

    monkeypatch.setattr(backup.shutil, "which", lambda name: None)
    (tmp_path / "state").mkdir()
    with pytest.raises(ConfigError, match=r"pg_dump is not installed: install PostgreSQL's client programs"):
        backup.backup(tmp_path / "state", tmp_path / "out", "postgresql+psycopg://kanoclip:secret@127.0.0.1:1/x")
