"""The offline --help examples of the commands that run until stopped (`serve`, `watch`), run as a user would:
their own process, stopped with Ctrl-C; then `history` on what `watch` recorded."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kanoclip.cli.station import BACKUP_EPILOG, HISTORY, SERVE, STATION_COMMANDS, WATCH

REPO = Path(__file__).resolve().parents[2]


def example(epilog: str) -> list[str]:
    """The first example of an epilog (the offline one), as argv after `kanoclip`."""
    line = next(line.strip() for line in epilog.splitlines() if line.strip().startswith("kanoclip "))
    return shlex.split(line.split("  ")[0])[1:]


def kanoclip(argv: list[str], cwd: Path) -> subprocess.Popen[str]:
    """The example as a user starts it from a terminal: Ctrl-C reaches it (a suite run in the background, as under
    `nohup ... &`, ignores SIGINT, and a child would inherit that and never stop)."""
    return subprocess.Popen(
        [sys.executable, "-m", "kanoclip", *argv, "--workers", "0", "--device", "cpu"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)  # Ctrl-C, as the examples say
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # a failed test leaves no process behind
            proc.kill()
            proc.communicate()
    return out


@pytest.mark.slow
def test_the_serve_example_answers_on_its_page_and_api(tmp_path: Path) -> None:
    argv = example(SERVE.epilog)
    assert argv[:3] == ["serve", "--preset", "kanoclip-tiny"]
    argv[argv.index("--port") + 1] = "0"  # the example's port may be taken on a test machine
    proc = kanoclip(argv, tmp_path)
    try:
        assert proc.stdout is not None
        url, deadline = None, time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            found = re.search(r"listening on (http://[\d.]+:\d+)", proc.stdout.readline())
            url = found.group(1) if found else None
        assert url, "serve did not start"
        image = (REPO / "examples/parts/defect/scratch_0.png").read_bytes()
        answer = httpx.post(f"{url}/v1/detect", files=[("files", ("s.png", image))], timeout=60).json()
        assert answer["results"][0]["score"] is not None
        assert "<html" in httpx.get(f"{url}/", timeout=10).text.lower()
    finally:
        stop(proc)


@pytest.mark.slow
def test_the_watch_example_scores_the_folder_and_history_and_check_read_it(tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    proc = kanoclip(example(WATCH.epilog), tmp_path)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (tmp_path / "st").exists():
            time.sleep(0.2)
        history = example(HISTORY.epilog)
        assert history == ["history", "st"]
        while time.monotonic() < deadline:
            listed = subprocess.run(
                [sys.executable, "-m", "kanoclip", *history], cwd=tmp_path, capture_output=True, text=True, timeout=60
            )
            if listed.returncode == 0 and all(f"good_{i}.png" in listed.stdout for i in range(3)):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"watch did not record the three good parts: {listed.stdout} {listed.stderr}")
    finally:
        out = stop(proc)
    assert "3 scored" in out, out
    checked = subprocess.run(
        [sys.executable, "-m", "kanoclip", *example(STATION_COMMANDS.epilog)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0 and "0 missing file(s), 0 orphan file(s)" in checked.stdout, checked
    backup = example(BACKUP_EPILOG)
    assert backup == ["station", "backup", "st", "st-backup"]
    copied = subprocess.run([sys.executable, "-m", "kanoclip", *backup], cwd=tmp_path, capture_output=True, text=True)
    assert copied.returncode == 0, copied.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "kanoclip", "history", "st-backup"], cwd=tmp_path, capture_output=True, text=True
    )
    assert all(f"good_{i}.png" in listed.stdout for i in range(3)), listed
