"""Defect typing on Ray (issue #34): the typed columns travel through the actors' Parquet shards, where most rows
have no type (judged normal) and one has no score (unreadable), and come out as local detect writes them."""

from __future__ import annotations

import csv
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kanoclip.inference.config import RunConfig
from kanoclip.inference.detector import Detector
from kanoclip.inference.outputs import detect_files
from kanoclip.inference.scale_out import detect_on_ray
from tests.conftest import TINY

pytestmark = pytest.mark.slow  # a Ray cluster


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def rows_of(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "scores.csv").read_text().splitlines()))


def test_ray_detect_writes_the_same_defect_types_as_local_detect(
    ray_cluster: None, shared_data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for p in sorted((shared_data / "MVTec_AD" / "bottle" / "test").glob("*/00[01].png")):
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    run = RunConfig.with_model(TINY, device="cpu", workers=0, batch_size=4, class_name="bottle")
    torch.set_num_threads(1)  # as each Ray actor runs (one CPU): the same kernels, so the same numbers
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = sorted(p.pred_score or 0 for p in Detector.from_config(run).run(sorted(folder.glob("*_*.png"))))
            run = run.replace(image_threshold=(scores[3] + scores[4]) / 2)  # half judged anomalous
            detect_files(Detector.from_config(run), [str(folder)], tmp_path / "local")
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    detect_on_ray(run, [str(folder)], tmp_path / "ray", workers=1, threads_per_worker=1)
    local, remote = rows_of(tmp_path / "local"), rows_of(tmp_path / "ray")
    assert list(local[0])[-2:] == ["defect_type", "defect_type_p"]
    assert sum(r["defect_type"] != "" for r in local) == 4 and sum(r["defect_type"] == "" for r in local) == 4
    assert local == remote
