"""Knowledge: the shipped base, answer parsing, the chat client against a real local server with faults, the cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kanoclip.knowledge import KnowledgeBase
from tests.support.chat_server import ChatServer


@pytest.mark.slow
def test_a_run_killed_midway_and_restarted_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    classes = ["bottle", "cable", "capsule", "carpet", "grid", "hazelnut"]
    cache, out = tmp_path / "cache.jsonl", tmp_path / "k.json"
    command = [
        sys.executable,
        "-m",
        "kanoclip",
        "knowledge",
        "general",
        *classes,
        "--out",
        str(out),
        "--cache",
        str(cache),
    ]
    with ChatServer().running() as server:
        server.delay_s = 0.3
        server.answer = lambda request: "\n".join(f"the {c} in view, answer {len(server.requests)}." for c in classes)
        command += ["--base-url", server.url, "--model", "m", "--api-key", "k"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while len(server.requests) < 5 and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not out.exists()  # killed before the end: no half-written knowledge file
        before = len(server.requests)
        server.delay_s = 0.0
        subprocess.run(command, env=env, check=True, capture_output=True)
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    keys = [line["key"] for line in lines]
    assert len(keys) == len(set(keys)) == 2 * len(classes)  # every question once
    assert len(server.requests) - before <= 2 * len(classes) - (before - 1)  # only what was not answered is asked
    assert set(KnowledgeBase.load(out).classes) == set(classes)
