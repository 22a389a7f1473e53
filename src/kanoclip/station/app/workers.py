"""The worker processes of this server's jobs: started from the event loop's thread (Linux kills a worker when the
thread that started it ends, and the loop's lasts as long as the server), watched until they exit, and stopped
with the server. A worker that exits without ending its job leaves it failed, with the last line it wrote."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

from fastapi.concurrency import run_in_threadpool

from kanoclip.station.adapting import DATABASE_ENV, ENDED
from kanoclip.station.errors import Conflict
from kanoclip.station.jobs import LOG
from kanoclip.station.station import Station

log = logging.getLogger("kanoclip.serve")
STOP_S = 10.0  # a worker asked to stop gets this long before it is killed


class Workers:
    """At most `max_jobs` worker processes at a time, by job id."""

    def __init__(self, station: Station, max_jobs: int) -> None:
        self.station, self.max_jobs = station, max_jobs
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.watching: set[asyncio.Task[None]] = set()

    def check_room(self) -> None:
        """Refused when `max_jobs` of this server's jobs are running (a worker whose job has ended, finishing its
        clean-up, does not count)."""
        busy = [job_id for job_id in list(self.running) if self.station.jobs.state(job_id) == "running"]
        if len(busy) >= self.max_jobs:
            raise Conflict(
                f"this server runs {self.max_jobs} job(s) at a time (--max-jobs), all busy: wait, or cancel one"
            )

    def start(self, job_id: str, state: Path) -> None:
        """The job's worker, its output into the job's log (call on the event loop's thread)."""
        self.check_room()
        engine = self.station.jobs.engine
        env = {**os.environ, DATABASE_ENV: engine.url.render_as_string(hide_password=False), "PYTHONUNBUFFERED": "1"}
        folder = self.station.jobs.folders.job(job_id)
        with (folder / LOG).open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "kanoclip.station.adapting", str(state), job_id, str(os.getpid())],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self.running[job_id] = process
        task = asyncio.create_task(self._watch(job_id, process))
        self.watching.add(task)
        task.add_done_callback(self.watching.discard)

    async def _watch(self, job_id: str, process: subprocess.Popen[bytes]) -> None:
        status = await run_in_threadpool(process.wait)
        self.running.pop(job_id, None)
        try:
            if status not in (0, ENDED):
                last = (self.station.jobs.tail(job_id, 1) or ["no output"])[0]
                self.station.jobs.end(job_id, "failed", f"its worker exited with status {status}: {last}")
            await run_in_threadpool(self.station.jobs.clean, job_id)
        except Exception as e:
            log.warning("job %s: could not record its end: %s", job_id, e)

    def stop(self, job_id: str) -> None:
        """Ask this server's worker of the job to stop now (its row says why)."""
        process = self.running.get(job_id)
        if process is not None:
            process.terminate()

    async def close(self) -> None:
        """Every worker stopped (killed past `STOP_S`), its job failed: the server is stopping."""
        for job_id in list(self.running):
            self.station.jobs.end(job_id, "failed", "its server stopped during the job")
            self.stop(job_id)
        if self.watching:
            await asyncio.wait(set(self.watching), timeout=STOP_S)
            for process in self.running.values():
                process.kill()
