"""`kanoclip adapt` resumes bit for bit, as `train` does (#32): a run killed with SIGKILL and started again ends with
the very weights, validations and best step of an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.training import TINY_FLAGS

pytestmark = pytest.mark.slow  # processes killed and started again


def run_adapt(goods: Path, out: Path) -> subprocess.Popen[bytes]:
    args = ["adapt", str(goods), "--class-name", "hazelnut", "--out", str(out), *TINY_FLAGS, "--workers", "0"]
    args += ["--device", "cpu", "--batch-size", "4", "--max-steps", "8", "--checkpoint-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "kanoclip", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def finish(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]


def test_an_adapt_run_killed_and_resumed_equals_an_uninterrupted_one(tmp_path: Path, shared_data: Path) -> None:
    goods = shared_data / "MVTec_derived_hazelnut_toy" / "hazelnut" / "train" / "good"
    finish(run_adapt(goods, tmp_path / "straight"))
    proc = run_adapt(goods, tmp_path / "killed")
    log = tmp_path / "killed" / "log.jsonl"
    while proc.poll() is None and (not log.is_file() or len(log.read_text().splitlines()) < 5):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed" / "final").exists()
    finish(run_adapt(goods, tmp_path / "killed"))
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    logs = [(tmp_path / run / "log.jsonl").read_text().splitlines() for run in ("straight", "killed")]
    assert logs[0] == logs[1]  # every step's losses and every validation, once each
    best = [json.loads((tmp_path / run / "best.json").read_text()) for run in ("straight", "killed")]
    assert best[0] == best[1]
