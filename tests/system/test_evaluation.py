"""`kanoclip evaluate`: metrics from the detector's own outputs, tables, the HTML report, undefined metrics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kanoclip.data.datasets import load_dataset
from kanoclip.data.datasets.synthetic import generate


@pytest.mark.slow
def test_evaluate_under_torchrun_with_2_gloo_processes_equals_one_process(tmp_path: Path) -> None:
    """Images are sharded in whole batches with no padding; rank 0 gathers and computes exactly the same metrics."""
    root = tmp_path / "data"
    generate(root, size=64, train=0, good=3, per_defect=2, seed=5)
    sizes = [len(v) for v in load_dataset(root).by_class().values()]
    assert any(n % 2 for n in sizes)  # a class whose size does not divide by the world size
    flags = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]
    args = ["-m", "kanoclip", "evaluate", str(root), *flags, "--batch-size", "2", "--device", "cpu", "--cases", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    for name, prefix in (("one", []), ("two", [*torchrun, "--master_port", str(port)])):
        done = subprocess.run(
            [sys.executable, *prefix, *args, "--out", str(tmp_path / name)], env=env, capture_output=True, timeout=600
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert [c["metrics"] for c in one["classes"]] == [c["metrics"] for c in two["classes"]]
    assert [c["images"] for c in one["classes"]] == [c["images"] for c in two["classes"]] == sizes
    assert one["means"] == two["means"] and two["info"]["processes"] == 2
