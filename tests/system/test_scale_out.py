"""`detect --ray` on a local Ray cluster the test starts (2 CPUs, node IP 127.0.0.1, dashboard off) and stops."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from kanoclip.cli import main
from kanoclip.errors import ConfigError
from kanoclip.inference.config import RunConfig
from kanoclip.inference.detector import Detector
from kanoclip.inference.outputs import detect_files
from kanoclip.inference.scale_out import detect_on_ray
from tests.conftest import TINY

TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--workers", "0"]
RUN = RunConfig.with_model(TINY, device="cpu", workers=0, batch_size=4)
pytestmark = pytest.mark.slow  # a Ray cluster per module


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def images(shared_data: Path, tmp_path: Path) -> Path:
    """Real images in a folder of their own, plus one corrupt file."""
    folder = tmp_path / "in"
    folder.mkdir()
    for p in sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("test/*/*.jpg"))[:9]:
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    shutil.copy(shared_data / "KolektorSDD" / "kos01" / "Part0.jpg", folder / "kolektor.jpg")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    return folder


def rows_of(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "scores.csv").read_text().splitlines()))


def test_ray_detect_writes_the_same_scores_and_maps_as_local_detect(
    ray_cluster: None, shared_data: Path, tmp_path: Path
) -> None:
    folder = images(shared_data, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.set_num_threads(1)  # as each Ray actor runs (one CPU): the same kernels, so the same numbers
        try:
            local = detect_files(Detector.from_config(RUN), [str(folder)], tmp_path / "local")
        finally:
            torch.set_num_threads(os.cpu_count() or 1)
    remote = detect_on_ray(RUN, [str(folder)], tmp_path / "ray", workers=1, threads_per_worker=1)
    with pytest.raises(ConfigError, match="--ray-workers 1"):  # 2 actors would leave no CPU to decode on
        detect_on_ray(RUN, [str(folder)], tmp_path / "ray2", workers=2)
    assert rows_of(tmp_path / "local") == rows_of(tmp_path / "ray")  # every score exactly, in input order
    files = {
        name: sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name).rglob("*") if p.is_file())
        for name in ("local", "ray")
    }
    assert files["local"] == [p for p in files["ray"] if p.parts[0] != "ray"]  # the same files, apart from shards
    runs = {name: json.loads((tmp_path / name / "run.json").read_text()) for name in ("local", "ray")}
    assert runs["ray"].pop("engine") == "torch on Ray" and runs["local"].pop("engine") == "torch"
    assert runs["ray"].pop("run_id") != runs["local"].pop("run_id")  # two runs: neither resumes the other
    assert runs["local"] == runs["ray"]  # every other field, and its value
    assert [f for f, _ in local.failed] == [f for f, _ in remote.failed] == [str(folder / "corrupt.png")]
    assert local.failed[0][1] == remote.failed[0][1]  # the same reader, the same message
    for row in rows_of(tmp_path / "local"):
        assert np.array_equal(np.load(tmp_path / "local" / row["map"]), np.load(tmp_path / "ray" / row["map"]))


def scorer_processes() -> set[int]:
    """Ray Data names an actor's worker process after its class (`ray::MapWorker(MapBatches(_Scorer))`)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"MapBatches(_Scorer)" in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_an_actor_killed_mid_run_still_gives_every_image_exactly_once_and_a_rerun_computes_nothing(
    ray_cluster: None, shared_data: Path, tmp_path: Path
) -> None:
    folder = images(shared_data, tmp_path)
    for p in sorted((shared_data / "KolektorSDD").rglob("Part[1-7].jpg"))[:20]:  # more, larger images: a longer run
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_an_actor_once_it_has_scored() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            actors = scorer_processes()
            if actors and (out / "maps").is_dir() and any((out / "maps").rglob("*.npy")):
                pid = min(actors)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_an_actor_once_it_has_scored)
    killer.start()
    run = RUN.replace(batch_size=1)
    summary = detect_on_ray(run, [str(folder)], out, workers=1)
    killer.join(timeout=130)
    assert killed, "no actor was killed"
    rows = rows_of(out)
    expected = sorted(str(p) for p in folder.iterdir() if p.name != "corrupt.png")
    assert sorted(r["path"] for r in rows) == expected  # every readable image exactly once
    assert [f for f, _ in summary.failed] == [str(folder / "corrupt.png")]
    before = {p: p.stat().st_mtime_ns for p in (out / "maps").rglob("*")}
    again = detect_on_ray(run, [str(folder)], out, workers=1)
    assert rows_of(out) == rows and again.failed == summary.failed
    assert {p: p.stat().st_mtime_ns for p in (out / "maps").rglob("*")} == before  # nothing recomputed


def test_ray_cli_reports_missing_inputs_and_list_files_like_local_detect(
    ray_cluster: None, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = images(shared_data, tmp_path)
    assert main(["detect", str(tmp_path / "nope"), "--ray", "--out", str(tmp_path / "x"), *TINY_FLAGS]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    listing = tmp_path / "list.txt"
    files = [*sorted(str(p) for p in folder.iterdir())[:3], str(tmp_path / "gone.png")]
    listing.write_text("\n".join(files) + "\n")
    assert main(["detect", str(listing), "--ray", "--out", str(tmp_path / "o"), *TINY_FLAGS]) == 1
    err = capsys.readouterr().err
    assert "gone.png" in err and "cannot read" in err
    assert len(rows_of(tmp_path / "o")) == 3 - ("corrupt.png" in " ".join(files[:3]))


def test_a_ray_rerun_with_other_options_is_refused_and_a_torn_shard_is_scored_again(
    ray_cluster: None, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rerun with `--threshold 0.5 --class-name screw` once kept the old rows; a cut-short shard made every rerun
    crash with ArrowInvalid."""
    folder = images(shared_data, tmp_path)
    out = tmp_path / "out"
    args = ["detect", str(folder), "--ray", "--out", str(out), *TINY_FLAGS, "--batch-size", "4"]
    assert main(args) == 1  # the corrupt file
    first = rows_of(out)
    other = [*args, "--threshold", "0.5", "--class-name", "screw"]
    capsys.readouterr()
    assert main(other) == 2 and "another run" in capsys.readouterr().err
    assert main([*other, "--overwrite"]) == 1
    relabelled = rows_of(out)
    assert [r["path"] for r in relabelled] == [r["path"] for r in first] and all("label" in r for r in relabelled)
    shard = sorted((out / "ray").rglob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a write cut short
    assert main([*other, "--overwrite"]) == 1
    assert "is damaged" in capsys.readouterr().err
    assert rows_of(out) == relabelled  # its images scored again, the same numbers
