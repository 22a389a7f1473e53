"""The adapt job's worker: `python -m kanoclip.station.adapting STATE JOB_ID SERVER_PID`, started by the server
(`app.workers`).

It adapts the profile's model to its good parts (`evaluation.adapt`: synthesized defects, the train loop, the best
step), measures the new model and the current one on the labelled history (`shadow`), and records the result as a
model version in the transaction that ends the job as done. It dies with its server (Linux), beats every second,
and stops as soon as its job is no longer running (cancelled); what it leaves behind, its server's successor
removes (`jobs`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import select

from kanoclip.evaluation.adapt import adapt
from kanoclip.inference.config import CHECKPOINT_CHANGES, RunConfig
from kanoclip.inference.detector import Detector
from kanoclip.inference.devices import die_with_parent
from kanoclip.model.config import TrainConfig
from kanoclip.station import db
from kanoclip.station.errors import Conflict
from kanoclip.station.jobs import JobFolders
from kanoclip.station.profiles import as_tuples
from kanoclip.station.shadow import LABELS, numbers, shadow_scores
from kanoclip.station.station import Station
from kanoclip.station.store import sha256_of
from kanoclip.station.teaching import latest_verdicts
from kanoclip.station.versions import json_model

SPEC = "job.json"
DATABASE_ENV = "KANOCLIP_JOB_DATABASE"  # the --database URL, kept out of files and of `ps`
ENDED = 3  # the worker's exit status when its job was ended elsewhere (cancelled)


def write_spec(folder: Path, base: RunConfig, settings: dict[str, Any]) -> None:
    """What the worker needs besides the database: the server's run options and the job's settings."""
    spec = {"base": dataclasses.asdict(base), "settings": settings}
    folder.mkdir(parents=True, mode=0o700, exist_ok=True)
    (folder / SPEC).write_text(json.dumps(spec))


def read_spec(folder: Path) -> tuple[RunConfig, dict[str, Any]]:
    spec = json.loads((folder / SPEC).read_text())
    return RunConfig(**{k: as_tuples(v) for k, v in spec["base"].items()}), spec["settings"]


class Heartbeat:
    """The job's phase and step, written with a heartbeat every second; the process ends once the job has ended."""

    def __init__(self, station: Station, job_id: str) -> None:
        self.station, self.job_id = station, job_id
        self.phase, self.step = "starting", 0
        self.steps: int | None = None
        self.stopped = threading.Event()  # set before the job is ended here: from then on it ends nothing
        threading.Thread(target=self._run, daemon=True).start()

    def progress(self, step: int, steps: int) -> None:
        self.phase, self.step, self.steps = "training", step, steps

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                state = self.station.jobs.beat(self.job_id, self.phase, self.step, self.steps)
            except Exception as e:  # the database away for a moment: the next beat tries again
                print(f"heartbeat: {e}", flush=True)
                state = "running"
            if state != "running" and not self.stopped.is_set():
                print(f"the job is {state}: stopping", flush=True)
                os._exit(ENDED)
            self.stopped.wait(1.0)


def run(state: Path, job_id: str) -> int:
    folders = JobFolders(state)
    folder = folders.job(job_id)
    base, settings = read_spec(folder)
    station = Station.open(base, state, os.environ.get(DATABASE_ENV))
    beat = Heartbeat(station, job_id)
    try:
        version = _adapt(station, folders, job_id, settings, beat)
    except Exception as e:
        traceback.print_exc()
        beat.stopped.set()
        station.jobs.end(job_id, "failed", f"{type(e).__name__}: {e}")
        return 1
    if version is None:
        return ENDED
    print(f"model version {version} recorded", flush=True)
    return 0


def _adapt(station: Station, folders: JobFolders, job_id: str, s: dict[str, Any], beat: Heartbeat) -> int | None:
    assert station.engine is not None and station.store is not None
    name, uid = s["profile"], s["profile_uid"]
    p = station.profile(name)
    if p.uid != uid:
        raise Conflict(f"profile {name!r} was deleted (and created again) since the job started")
    references = station.good_part_images(name)
    history = [
        (result_id, station.store.get(sha), verdict)
        for result_id, sha, verdict in latest_verdicts(station.engine, uid)
        if station.store.exists(sha)
    ]
    goods = dict((sha256_of(data), data) for _, data in references)
    goods |= {sha256_of(data): data for _, data, verdict in history if verdict == "good"}
    folder = folders.job(job_id)
    files = [_write_image(folder / "goods", i, data) for i, data in enumerate(goods.values())]
    current = station.detector(name)
    config = current.config.replace(kd_use_vqa=False)  # no per-image knowledge for a new product
    train = TrainConfig(max_steps=s["max_steps"], seed=s["seed"], num_workers=0)
    beat.phase = "data"
    print(f"adapting {name!r} from {len(files)} good part(s); {len(history)} labelled row(s) to measure on", flush=True)
    final = adapt(
        config,
        train,
        [str(f) for f in files],
        folder / "run",
        p.class_name or "object",
        s["synth"],
        s["val_fraction"],
        device=station.base.device,
        progress=beat.progress,
    )
    beat.phase = "evaluating"
    labels = [LABELS[verdict] for _, _, verdict in history]
    current_cal, current_scores = shadow_scores(current, references, history)
    backbone = tuple((k, v) for k, v in p.model_changes if k in CHECKPOINT_CHANGES)
    model = dataclasses.replace(p, checkpoint=str(final), engine="torch", exported=None, model_changes=backbone)
    new = Detector.from_config(station.run_of(model))
    new_cal, new_scores = shadow_scores(new, references, history)
    fields = {
        "model_changes": [list(pair) for pair in backbone],
        "parent": {"version": p.model_version, "model": json_model(p.model())},
        "parts": sorted(goods),
        "config": {"model": config.to_dict(), "train": train.to_dict(), "adapt": s},
        "numbers": {
            "new": numbers(labels, new_scores, new_cal["image_threshold"]),
            "current": numbers(labels, current_scores, current_cal["image_threshold"]),
            # the rows whose image the new model was not trained on (its good parts are both): the fairer comparison
            "unseen": {
                "new": numbers(*unseen(history, goods, labels, new_scores), new_cal["image_threshold"]),
                "current": numbers(*unseen(history, goods, labels, current_scores), current_cal["image_threshold"]),
            },
        },
        "shadow": [
            [result_id, label, a, b]
            for (result_id, _, _), label, a, b in zip(history, labels, new_scores, current_scores, strict=True)
        ],
        "thresholds": {k: new_cal[k] for k in ("image_threshold", "pixel_threshold", "basis")},
    }
    beat.phase = "saving"
    staged, target = folders.staged_model(uid, job_id), folders.model(uid, job_id)
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(final, staged)
    staged.rename(target)  # whole or not at all; a version row names it only once this is done
    beat.stopped.set()  # the job ends here (done, or found cancelled): the heartbeat must not end the process
    with station.engine.begin() as c:
        if not station.jobs.end(job_id, "done", c=c):
            return None  # cancelled meanwhile: its server removes the folder
        alive = c.execute(select(db.profiles.c.uid).where(db.profiles.c.name == name)).scalar()
        if alive != uid:
            raise Conflict(f"profile {name!r} was deleted while the job ran")
        version = station.versions.record(c, p, job_id, fields)
        c.execute(db.jobs.update().where(db.jobs.c.id == job_id).values(version=version))
    station.changed_profiles()  # the profile as stored now: its current version and rollbacks are kept
    station.versions.prune(station.profile(name), s["keep_versions"])
    station.jobs.clean(job_id)
    return version


def unseen(
    history: list[tuple[int, bytes, str]], trained: dict[str, bytes], labels: list[int], scores: list[float | None]
) -> tuple[list[int], list[float | None]]:
    """The labels and scores of the rows whose image is not among the `trained` parts."""
    keep = [sha256_of(data) not in trained for _, data, _ in history]
    return [y for y, k in zip(labels, keep, strict=True) if k], [x for x, k in zip(scores, keep, strict=True) if k]


def _write_image(folder: Path, i: int, data: bytes) -> Path:
    """A stored good part as a file `adapt` reads, named with its format's extension."""
    folder.mkdir(parents=True, exist_ok=True)
    kind = (Image.open(io.BytesIO(data)).format or "png").lower()
    path = folder / f"{i:05d}.{'jpg' if kind == 'jpeg' else kind}"
    path.write_bytes(data)
    return path


def main() -> int:
    die_with_parent()  # a server killed takes its job's worker with it; its successor fails the job
    if len(sys.argv) != 4:
        print("usage: python -m kanoclip.station.adapting STATE JOB_ID SERVER_PID", file=sys.stderr)
        return 2
    if os.getppid() != int(sys.argv[3]):  # the server died before the request above took effect
        return ENDED
    return run(Path(sys.argv[1]), sys.argv[2])


if __name__ == "__main__":
    raise SystemExit(main())
