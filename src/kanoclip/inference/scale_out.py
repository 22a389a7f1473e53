"""`kanoclip detect --ray`: batch detection on Ray Data, for archives bigger than one machine.

The inputs are cut into the same batches a local run makes; Ray tasks read each batch's bytes and decode them with
kanoclip's one decoder (same limits, same errors), and a pool of actors, each holding one Detector built from the
run config, scores them (`map_batches` with stateful actors). Actors write `run.json`, maps and overlays through the
writer local detect uses, and return rows that land as Parquet shards under `<out>/ray/`. The run is resumable and
exactly once: a rerun skips every image a shard already holds, an actor that dies is restarted by Ray and its batch
redone, and the merge keeps one row per image in input order before writing `scores.csv`.
"""

from __future__ import annotations

import os
import pickle
import sys
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from kanoclip.data.images import ImageLimits, decode
from kanoclip.data.inputs import expand_inputs, output_names
from kanoclip.errors import ConfigError, KanoclipError
from kanoclip.inference.config import RunConfig
from kanoclip.inference.detector import Detector, Prediction
from kanoclip.inference.outputs import SCORES, DetectSummary, Row, RunFolder, run_identity

RAY_EXTRA = "pip install 'kanoclip[ray]'  (ray[data], pyarrow, fsspec)"
SHARDS = "ray"
DECODE_CPUS = 0.5  # per decoding task: they overlap with the actors' forward passes


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ConfigError(f"ray is not installed: {RAY_EXTRA}") from e
    return ray


def connect(address: str | None) -> None:
    """Join `address` (or RAY_ADDRESS); with neither, start a local instance bound to 127.0.0.1, dashboard off, so
    none of its traffic leaves the loopback interface."""
    ray = _ray()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address or 'a new local instance'}: {e}") from e


def list_inputs(inputs: Sequence[str], exclude: Path | None = None) -> list[str]:
    """Folders, globs and files as locally, plus list files: `.txt` (one path or URI a line) or `.parquet` (a
    `path` column). URIs (s3://, gs://, ...) are read by the workers through fsspec."""
    paths: list[str] = []
    local: list[str] = []
    for raw in inputs:
        if raw.endswith(".txt") and Path(raw).is_file():
            paths += [line.strip() for line in Path(raw).read_text().splitlines() if line.strip()]
        elif raw.endswith(".parquet") and Path(raw).is_file():
            import pyarrow.parquet as pq

            table = pq.read_table(raw)
            if "path" not in table.column_names:
                raise ConfigError(f"{raw}: a list file in Parquet needs a 'path' column (has {table.column_names})")
            paths += [str(p) for p in table.column("path").to_pylist()]
        elif "://" in raw:
            paths.append(raw)
        else:
            local.append(raw)
    if local:
        paths += [str(p) for p in expand_inputs(local, exclude)[0]]
    return list(dict.fromkeys(paths))


def _read_bytes(path: str) -> bytes:
    if "://" in path:
        import fsspec

        with fsspec.open(path, "rb") as f:
            data: bytes = f.read()
            return data
    return Path(path).read_bytes()


def _decode_batch(item: dict[str, Any]) -> dict[str, Any]:
    """A Ray task: one batch's files read and decoded by kanoclip's decoder, under the run's limits; errors travel
    as data."""
    limits = ImageLimits(max_pixels=item["max_pixels"])
    decoded: list[tuple[str, np.ndarray | None, str | None]] = []
    for path in item["paths"]:
        try:
            try:
                data = _read_bytes(path)
            except OSError as e:
                raise KanoclipError(f"{path}: cannot read ({e.strerror or e})") from e
            decoded.append((path, decode(data, path, limits), None))
        except KanoclipError as e:
            decoded.append((path, None, str(e)))
    return {"batch": item["batch"], "payload": pickle.dumps((item["names"], decoded))}


class _Scorer:
    """A Ray actor holding one Detector, built from the run config as every detector is; writes `run.json` and each
    image's files through the one writer, and returns the rows."""

    def __init__(
        self,
        run: RunConfig,
        inputs: list[str],
        out: str,
        save_maps: bool,
        threads: int,
        identity: str,
        first_batch: list[str],
    ) -> None:
        import torch

        torch.set_num_threads(threads)  # Ray pins an actor to its CPU count (1): the forward may use its share
        self.detector = Detector.from_config(run)
        self.detector.check_thresholds()
        self.detector.fit_overlay_scale(_readable(first_batch, self.detector))  # the scale a local run sets
        self.folder = RunFolder(out, save_maps)
        described = self.detector.describe()
        described["engine"] = f"{described['engine']} on Ray"
        self.folder.write_run(inputs, described, identity)  # the same in every actor

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows: dict[str, list[Any]] = {name: [] for name in Row.__dataclass_fields__}
        for payload in batch["payload"]:
            names, decoded = pickle.loads(payload)
            good = [rgb for _, rgb, err in decoded if err is None]
            predictions = iter(self.detector.predict_many(good) if good else [])
            for name, (path, rgb, error) in zip(names, decoded, strict=True):
                p = Prediction(path, error=error)
                if error is None:
                    p = next(predictions)
                    p.source, p.image = path, rgb
                for key, value in asdict(self.folder.write_image(name, p, self.detector)).items():
                    rows[key].append(value)
        return rows


def _readable(paths: list[str], detector: Detector) -> list[np.ndarray]:
    """The images of `paths` that decode (the ones a local run's first batch scores)."""
    out = []
    for path in paths:
        try:
            out.append(decode(_read_bytes(path), path, detector.limits))
        except (KanoclipError, OSError):
            continue
    return out


def done_rows(out: Path, identity: str) -> dict[str, Row]:
    """Every image the shards of this run hold, by path (the first row of each, if a batch was redone). A shard
    cut short by a crash is removed, with a warning: its images are scored again."""
    folder = out / SHARDS / identity
    shards = sorted(folder.rglob("*.parquet")) if folder.is_dir() else []
    if not shards:
        return {}
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: dict[str, Row] = {}
    for shard in shards:
        try:
            table = pq.read_table(shard)
        except (pa.ArrowException, OSError) as e:
            print(f"warning: {shard} is damaged ({e}); its images are scored again", file=sys.stderr)
            shard.unlink()
            continue
        for row in table.to_pylist():
            rows.setdefault(row["path"], Row(**row))
    return rows


def detect_on_ray(
    run: RunConfig,
    inputs: Sequence[str],
    out_dir: str | Path,
    address: str | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    save_maps: bool = True,
    threads_per_worker: int | None = None,
    overwrite: bool = False,
) -> DetectSummary:
    """Score `inputs` on Ray with detectors built from `run`; returns what local detect returns. Shards are kept per
    run identity: a rerun of the same run skips what is done; another run in the folder is refused (or replaced with
    `overwrite`). `threads_per_worker` (default: the cluster's CPUs over the workers) sets each actor's threads."""
    out = Path(out_dir)
    paths = list_inputs(inputs, exclude=out)
    identity = run_identity(run, inputs, save_maps, on="ray")
    RunFolder(out, save_maps).prepare(identity, overwrite)
    previous = done_rows(out, identity)
    todo = [p for p in paths if p not in previous]
    names = dict(zip(paths, output_names([Path(p) for p in paths]), strict=True))
    print(f"{len(paths)} images; {len(paths) - len(todo)} already scored in {out / SHARDS}; {len(todo)} to score")
    if todo:
        connect(address)
        ray = _ray()
        cpus = ray.cluster_resources().get("CPU", 0)
        if gpus_per_worker == 0 and workers + DECODE_CPUS > cpus:
            raise ConfigError(
                f"{workers} CPU actors need {workers} of the cluster's {cpus:g} CPUs and decoding needs some left: "
                f"use --ray-workers {max(1, int(cpus - DECODE_CPUS))} or fewer, or --gpus-per-worker"
            )
        size = run.batch_size
        batches = [
            {
                "batch": i,
                "paths": todo[s : s + size],
                "names": [names[p] for p in todo[s : s + size]],
                "max_pixels": run.max_pixels,
            }
            for i, s in enumerate(range(0, len(todo), size))
        ]
        dataset = ray.data.from_items(batches).map(_decode_batch, num_cpus=DECODE_CPUS)
        scored = dataset.map_batches(
            _Scorer,
            fn_constructor_kwargs={
                "run": _actor_run(run, gpus_per_worker),
                "inputs": [str(i) for i in inputs],
                "out": str(out),
                "save_maps": save_maps,
                "threads": threads_per_worker or max(1, int(cpus // workers)),
                "identity": identity,
                "first_batch": paths[: run.batch_size],
            },
            batch_size=1,  # one batch of images per call: the same batches, so the same numbers, as a local run
            concurrency=workers,
            num_gpus=gpus_per_worker,
            max_restarts=-1,
            max_task_retries=-1,
        )
        scored.write_parquet(str(out / SHARDS / identity / f"run-{uuid.uuid4().hex[:8]}"))
    return merge(out, paths, save_maps, identity)


def _actor_run(run: RunConfig, gpus_per_worker: float) -> RunConfig:
    """What an actor runs: decoding is done by Ray tasks, and a torch model goes on the device Ray gave it."""
    run = run.replace(workers=0)
    if run.engine == "torch":
        run = run.replace(device="cuda" if gpus_per_worker > 0 else "cpu")
    return run


def merge(out: Path, paths: list[str], save_maps: bool, identity: str) -> DetectSummary:
    """One row per input, in input order, from every shard of the run: scores.csv written by the one writer."""
    rows = done_rows(out, identity)
    missing = [p for p in paths if p not in rows]
    if missing:
        raise ConfigError(f"{len(missing)} image(s) have no row after the run (first: {missing[0]}); run it again")
    folder = RunFolder(out, save_maps)
    failed = folder.write_scores((rows[p] for p in paths), folder.labelled())
    return DetectSummary(len(paths), failed, 0, out / SCORES)
