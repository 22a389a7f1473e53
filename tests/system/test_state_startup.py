"""Two `kanoclip serve` started at the same moment on a new state, SQLite and PostgreSQL, both come up (issue 30,
finding 16: the second died with `table alembic_version already exists`)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from kanoclip.station import db
from tests.support.postgres import throwaway_cluster
from tests.support.serving import serve_process

pytestmark = pytest.mark.slow  # real server processes and a PostgreSQL cluster


KEY = "k" * 32


@contextmanager
def started_together(folder: Path, *args: str, count: int = 2) -> Iterator[list[tuple[subprocess.Popen[str], str]]]:
    """`count` servers released at the same moment: each blocks reading its --api-key-file, a FIFO, just before it
    opens the state, until every one is there; then all read the key at once. Those that came up are stopped at the
    end, and one that did not is the test's failure."""
    fifos = [folder / f"key{i}" for i in range(count)]
    for fifo in fifos:
        os.mkfifo(fifo)
    managers = [serve_process(*args, "--api-key-file", str(fifo)) for fifo in fifos]
    with ExitStack() as stack:
        with ThreadPoolExecutor(count) as pool:
            entered = [pool.submit(manager.__enter__) for manager in managers]
            writers = [os.open(fifo, os.O_WRONLY) for fifo in fifos]  # each returns once its server is reading
            for writer in writers:
                os.write(writer, KEY.encode())
            for writer in writers:
                os.close(writer)
            wait(entered)
        for manager, future in zip(managers, entered, strict=True):
            if future.exception() is None:
                stack.push(manager.__exit__)
        yield [future.result() for future in entered]


def assert_all_serve(servers: list[tuple[subprocess.Popen[str], str]]) -> None:
    for proc, url in servers:
        assert proc.poll() is None
        assert httpx.get(f"{url}/v1/health", timeout=10).status_code == 200
        profiles = httpx.get(f"{url}/v1/profiles", headers={"X-API-Key": KEY}, timeout=10).json()["profiles"]
        assert "default" in {p["name"] for p in profiles}


def test_two_servers_started_together_on_a_new_sqlite_state_both_come_up(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with started_together(tmp_path, "--state", str(state)) as servers:
        assert_all_serve(servers)
    engine = db.connect(db.database_url(state), upgrade=False)
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()


def test_two_servers_started_together_on_a_new_postgresql_database_both_come_up(tmp_path: Path) -> None:
    with throwaway_cluster() as cluster:
        url = cluster.new_database()
        with started_together(tmp_path, "--state", str(tmp_path / "state"), "--database", url) as servers:
            assert_all_serve(servers)
        engine = db.connect(url, upgrade=False)
        assert db.current_revision(engine) == db.head_revision()
        engine.dispose()
