"""#32: a `kanoclip serve` killed with SIGKILL during an adapt job. Its worker dies with it; after a restart the job
is failed (not running), no model version or model folder exists, its data is gone and `station check` is clean.
On SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.postgres import throwaway_cluster
from tests.support.serving import serve_process
from tests.support.station import HAZELNUT

pytestmark = pytest.mark.slow  # real server processes, a training worker, and a PostgreSQL cluster


def workers_of(job_id: str) -> list[int]:
    """The pids of live worker processes of this job."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kanoclip.station.adapting" in cmdline and job_id.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    if request.param == "sqlite":
        yield []
    else:
        with throwaway_cluster() as cluster:
            yield ["--database", cluster.new_database()]


def test_a_server_killed_during_a_job_leaves_it_failed_and_nothing_half_written(
    shared_data: Path, tmp_path: Path, database: list[str]
) -> None:
    state = tmp_path / "st"
    goods = sorted((shared_data / HAZELNUT / "train" / "good").glob("*"))[:4]
    with serve_process("--state", str(state), *database) as (proc, url):
        files = [("files", (p.name, p.read_bytes())) for p in goods]
        assert httpx.post(f"{url}/v1/profiles/default/references", files=files, timeout=60).status_code == 200
        answer = httpx.post(f"{url}/v1/profiles/default/adapt", json={"max_steps": 100000}, timeout=30)
        assert answer.status_code == 202, answer.text
        job = answer.json()

        def training() -> bool:
            return httpx.get(f"{url}{job['url']}", timeout=10).json()["phase"] == "training"

        until(training, 120, "the job to train")
        assert workers_of(job["id"])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    until(lambda: not workers_of(job["id"]), 30, "the worker to die with its server")
    assert (state / "jobs" / job["id"] / "run").is_dir()  # what the killed worker had written, before the restart

    with serve_process("--state", str(state), *database) as (_, url):

        def failed() -> bool:
            return httpx.get(f"{url}{job['url']}", timeout=10).json()["state"] != "running"

        until(failed, 30, "the restarted server to fail the job")
        ended = httpx.get(f"{url}{job['url']}", timeout=10).json()
        assert ended["state"] == "failed" and "server stopped" in ended["error"]
        assert httpx.get(f"{url}/v1/profiles/default/models", timeout=10).json()["versions"] == []
    assert sorted(p.name for p in (state / "jobs" / job["id"]).iterdir()) == ["job.json", "log.txt"]
    models = state / "models"
    assert not models.exists() or not any(models.rglob("*")), list(models.rglob("*"))
    check = subprocess.run(
        [sys.executable, "-m", "kanoclip", "station", "check", str(state), *database],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
