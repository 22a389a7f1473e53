"""`kanoclip evaluate`: metrics from the detector's own outputs, tables, the HTML report, undefined metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kanoclip.cli import main
from kanoclip.data.datasets.synthetic import generate


def test_evaluate_cli_on_shared_data_says_what_it_found_and_marks_undefined_metrics(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]
    datasets = [str(shared_data / "Kvasir-SEG"), str(shared_data / "MVTec_AD")]
    assert main(["evaluate", *datasets, "--out", str(tmp_path), *flags]) == 0
    out = capsys.readouterr().out
    assert "5 images (0 good, 5 defect), 5 masks" in out  # the summary comes before the work
    assert "random CLIP weights" in out
    document = json.loads((tmp_path / "results.json").read_text())
    rows = {c["dataset"]: c["metrics"] for c in document["classes"]}
    assert rows["Kvasir-SEG"]["image_auroc"] is None and rows["Kvasir-SEG"]["aupro"] is not None  # all anomalous
    assert rows["MVTec_AD"]["pixel_auroc"] is None and not math.isnan(rows["MVTec_AD"]["image_auroc"])  # no masks
    assert "| MVTec_AD | bottle | 20 |" in (tmp_path / "results.md").read_text()


def test_evaluate_lists_unreadable_images_and_exits_1_with_results_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    generate(root, size=64, train=0, good=3, per_defect=2, seed=4)
    victim = sorted(root.rglob("test/good/*.png"))[0]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    flags = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]
    assert main(["evaluate", str(root), "--out", str(tmp_path / "ev"), *flags]) == 1
    assert victim.name in capsys.readouterr().err
    document = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert any(victim.name in " ".join(c["unreadable"]) for c in document["classes"])
