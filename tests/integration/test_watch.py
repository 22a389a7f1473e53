"""`kanoclip watch`: hot folders, videos and streams into the station's history, exactly once; sinks; bad input.
Every server here (MJPEG camera, webhook receiver) listens on 127.0.0.1 and stops with its test."""

from __future__ import annotations

import hashlib
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from kanoclip.cli import main
from kanoclip.errors import ConfigError
from kanoclip.inference.thresholds import Thresholds
from kanoclip.station.station import Station
from kanoclip.station.watch.watcher import LocalScorer, WatchConfig, Watcher
from tests.support.serving import TINY_FLAGS
from tests.support.station import BOTTLE, base_run
from tests.support.streams import mjpeg_camera, webhook_receiver
from tests.support.watch import FAST, bottles, station_at, wait_for, watching


def rows(station: Station) -> list[dict[str, Any]]:
    return list(station.iter_results())[::-1]


def events(station: Station, kind: str) -> list[dict[str, Any]]:
    return [e for e in station.events() if e["kind"] == kind]


def test_files_copied_in_slowly_are_scored_once_and_complete(tmp_path: Path, shared_data: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    station = station_at(tmp_path / "state")
    data = bottles(shared_data, 1)[0].read_bytes()
    with watching(station, [str(inbox)], settle_s=0.8):
        with (inbox / "part.png").open("wb") as f:  # a camera writing in four chunks, 0.4 s apart
            for i in range(4):
                f.write(data[i * len(data) // 4 : (i + 1) * len(data) // 4])
                f.flush()
                time.sleep(0.4)
        wait_for(lambda: rows(station), what="the result")
        time.sleep(1.5)  # any second scoring would land by now
    recorded = rows(station)
    assert len(recorded) == 1 and recorded[0]["error"] is None
    assert recorded[0]["image_sha256"] == hashlib.sha256(data).hexdigest()  # the whole file, not a part


def test_ng_dir_receives_exactly_the_ng_files_and_ok_dir_the_rest(tmp_path: Path, shared_data: Path) -> None:
    inbox, ok, ng = tmp_path / "inbox", tmp_path / "ok", tmp_path / "ng"
    inbox.mkdir()
    images = bottles(shared_data, 8)
    station = station_at(tmp_path / "state")
    scores = sorted(station.detector("default").predict(p)[0] for p in images)
    station.set_thresholds("default", Thresholds(float(np.median(scores))))  # about half NG
    for i, p in enumerate(images):
        shutil.copy(p, inbox / f"{i}_{p.name}")
    with watching(station, [str(inbox)], ok_dir=ok, ng_dir=ng):
        wait_for(lambda: len(rows(station)) == 8 and not any(inbox.iterdir()), what="8 sorted files")
    labels = {Path(r["source"]).name: r["label"] for r in rows(station)}
    assert sorted(_original(p) for p in ng.iterdir()) == sorted(n for n, label in labels.items() if label == 1)
    assert sorted(_original(p) for p in ok.iterdir()) == sorted(n for n, label in labels.items() if label == 0)
    assert 0 < len(list(ng.iterdir())) < 8


def _original(sorted_copy: Path) -> str:
    """`20261204T081502.120Z_000042_cam.png` -> `cam.png` (and the prefix has that form)."""
    when, number, name = sorted_copy.name.split("_", 2)
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{3}Z", when) and re.fullmatch(r"\d{6}", number), sorted_copy.name
    return name


def test_a_camera_writing_every_part_as_one_name_into_a_folder_that_holds_the_sort_folders(
    tmp_path: Path, shared_data: Path
) -> None:
    """#31: three parts written one after another as `cam.png`, with --ok-dir and --ng-dir inside the watched
    folder: three rows, three sorted files (none overwritten), and nothing sorted is taken in again."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    ok, ng = inbox / "ok", inbox / "ng"
    images = bottles(shared_data, 3)
    station = station_at(tmp_path / "state")
    station.set_thresholds("default", Thresholds(-1.0))  # every part a defect: all three meet in ng/
    with watching(station, [str(inbox)], ok_dir=ok, ng_dir=ng):
        for i, image in enumerate(images, 1):
            (inbox / ".cam.png.tmp").write_bytes(image.read_bytes())
            (inbox / ".cam.png.tmp").rename(inbox / "cam.png")
            wait_for(lambda i=i: len(rows(station)) == i and not (inbox / "cam.png").exists(), what=f"part {i}")
        time.sleep(1.5)  # a sorted part taken in again would be scored by now
    recorded = rows(station)
    assert len(recorded) == 3 and {r["source"] for r in recorded} == {str(inbox / "cam.png")}
    assert sorted(r["image_sha256"] for r in recorded) == sorted(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in images
    )
    copies = sorted(ng.iterdir())
    assert [_original(p) for p in copies] == ["cam.png"] * 3 and not list(ok.iterdir())
    assert [p.read_bytes() for p in copies] == [p.read_bytes() for p in images]  # in the order written


def test_a_generated_video_gives_one_row_per_sampled_frame_and_pasted_defects_score_higher(
    tmp_path: Path, shared_data: Path
) -> None:
    """3 s at 10 fps of a real good bottle, a piece of a hazelnut pasted on frames 10-19; sampled at 5 fps; one
    reference (the clean frame): the defect frames score above every clean one (random weights: a pipeline check)."""
    video = tmp_path / "line.mp4"
    clean, _ = write_video(video, shared_data)
    reference = tmp_path / "good.png"
    Image.fromarray(clean).save(reference)
    station = station_at(tmp_path / "state", references=(str(reference),))
    watcher = Watcher(LocalScorer(station, "default"), [str(video)], WatchConfig(**{**FAST, "fps": 5.0}))
    counts = watcher.run()  # a video file ends: the watcher returns
    recorded = rows(station)
    assert counts["scored"] == 15 and [r["frame_index"] for r in recorded] == list(range(0, 30, 2))
    assert [r["frame_time"] for r in recorded] == pytest.approx([i / 10 for i in range(0, 30, 2)])
    with_defect = [r["score"] for r in recorded if 10 <= r["frame_index"] < 20]
    without = [r["score"] for r in recorded if not 10 <= r["frame_index"] < 20]
    assert min(with_defect) > max(without), (with_defect, without)
    assert (
        Watcher(LocalScorer(station, "default"), [str(video)], WatchConfig(**{**FAST, "fps": 5.0})).run()["scored"] == 0
    )  # run again: every frame is already recorded


def write_video(path: Path, shared_data: Path, frames: int = 30) -> tuple[np.ndarray, list[int]]:
    """`frames` frames at 10 fps of a real good bottle with a piece of a hazelnut pasted on frames 10-19."""
    import cv2

    clean = np.asarray(
        Image.open(shared_data / BOTTLE / "train" / "good" / "000.png").convert("RGB").resize((224, 224))
    )
    nut = sorted((shared_data / "MVTec_derived_hazelnut_toy" / "hazelnut" / "test").rglob("*.jpg"))[0]
    patch = np.asarray(Image.open(nut).convert("RGB").resize((224, 224)))
    defect = clean.copy()
    defect[80:150, 80:150] = patch[77:147, 77:147]  # a piece of another object pasted on the bottle
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (224, 224))
    for i in range(frames):
        writer.write(cv2.cvtColor(defect if 10 <= i < 20 else clean, cv2.COLOR_RGB2BGR))
    writer.release()
    return clean, list(range(10, 20))


def test_detect_on_a_video_writes_per_frame_scores_and_an_annotated_video(tmp_path: Path, shared_data: Path) -> None:
    import csv

    import cv2

    video, out = tmp_path / "line.mp4", tmp_path / "out"
    write_video(video, shared_data)
    assert main(["detect", str(video), "--out", str(out), *TINY_FLAGS, "--fps", "5", "--annotate"]) == 0
    table = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["path"] for r in table] == [f"{video}#frame={i}" for i in range(0, 30, 2)]
    assert all(0 <= float(r["score"]) <= 1 for r in table)
    annotated = cv2.VideoCapture(str(out / "annotated.mp4"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 15 and annotated.read()[0]
    annotated.release()
    assert (out / "maps" / "frame_000010.overlay.png").is_file()


def test_an_mjpeg_stream_is_read_dropped_and_resumed_and_the_gap_is_recorded(tmp_path: Path) -> None:
    frame = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    station = station_at(tmp_path / "state")
    with (
        mjpeg_camera(frame, fps=20, drop_after=10, down_s=1.0) as camera,
        watching(station, [camera["url"]], fps=5.0),
    ):
        wait_for(lambda: events(station, "stream_gap") and len(rows(station)) >= 6, what="a gap and frames after it")
    gap = events(station, "stream_gap")[0]
    assert camera["connections"] >= 2 and "reconnected" in gap["detail"]
    seconds = float(gap["detail"].split("no frames for ")[1].split(" s")[0])
    assert seconds >= 1.0  # the camera was down for a second
    after = [r for r in rows(station) if r["created_at"] > gap["created_at"]]
    assert after and all(r["error"] is None for r in after)


def test_the_webhook_gets_one_post_per_ng_result_and_a_down_one_never_stops_scoring(
    tmp_path: Path, shared_data: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    images = bottles(shared_data, 6)
    station = station_at(tmp_path / "state")
    scores = sorted(station.detector("default").predict(p)[0] for p in images)
    station.set_thresholds("default", Thresholds(float(np.median(scores))))
    for p in images:
        shutil.copy(p, inbox / f"{p.parent.name}_{p.name}")
    with webhook_receiver() as hook, watching(station, [str(inbox)], webhook=hook["url"], webhook_on="ng"):
        wait_for(lambda: len(rows(station)) == 6, what="6 results")
        ng = [r for r in rows(station) if r["label"] == 1]
        wait_for(lambda: len(hook["received"]) == len(ng), what="one POST per NG result")
        time.sleep(0.5)
    assert sorted(r["id"] for r in hook["received"]) == sorted(r["id"] for r in ng) and all(
        r["label"] == 1 for r in hook["received"]
    )

    down = tmp_path / "down"
    down.mkdir()
    for p in images:
        shutil.copy(p, down / f"again_{p.parent.name}_{p.name}")
    closed = "http://127.0.0.1:9/hook"  # the discard port: nothing listens
    with watching(station, [str(down)], webhook=closed, webhook_on="all"):
        wait_for(lambda: len(rows(station)) == 12, timeout=60, what="scoring to go on with the webhook down")
        wait_for(lambda: events(station, "webhook_failed"), timeout=60, what="the undelivered result recorded")
    assert "not delivered" in events(station, "webhook_failed")[0]["detail"]


def test_bad_sources_are_clear_errors_or_recorded_failures_and_the_watcher_keeps_going(
    tmp_path: Path, shared_data: Path
) -> None:
    station = station_at(tmp_path / "state")
    with pytest.raises(ConfigError, match="not a folder to watch"):
        Watcher(LocalScorer(station, "default"), [str(tmp_path / "nowhere")], WatchConfig(**FAST))
    with pytest.raises(ConfigError, match="no such video file"):
        Watcher(LocalScorer(station, "default"), [str(tmp_path / "nowhere.mp4")], WatchConfig(**FAST))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)  # a header, then no decodable video
    with watching(station, [str(inbox), str(broken)], max_wait_s=2.0) as watcher:
        (inbox / "cut.png").write_bytes(bottles(shared_data, 1)[0].read_bytes()[:5000])  # a truncated PNG
        growing = inbox / "growing.png"
        stop = threading.Event()

        def keep_writing() -> None:
            with growing.open("wb") as f:
                while not stop.is_set():
                    f.write(b"x" * 100)
                    f.flush()
                    time.sleep(0.1)

        writer = threading.Thread(target=keep_writing, daemon=True)
        writer.start()
        try:
            wait_for(lambda: events(station, "never_completed"), timeout=30, what="the never-completed file")
        finally:
            stop.set()
            writer.join()
        shutil.copy(bottles(shared_data, 1)[0], inbox / "fine.png")  # and the watcher still scores
        wait_for(lambda: any(Path(r["source"]).name == "fine.png" for r in rows(station)), what="a later file")
        assert watcher.counts["failed"] >= 2
    failures = {Path(r["source"]).name: r["error"] for r in rows(station) if r["error"]}
    assert "cut.png" in failures  # recorded as a failed result with the decoder's reason
    assert (
        events(station, "source_error") and "cannot be opened as video" in events(station, "source_error")[0]["detail"]
    )
    assert "growing.png" in events(station, "never_completed")[0]["source"]


def test_an_unknown_profile_without_model_flags_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    code = main(["watch", str(inbox), "--profile", "nope", "--state", str(tmp_path / "state"), "--quiet"])
    assert code == 2 and "no profile 'nope'" in capsys.readouterr().err


def test_without_a_terminal_progress_is_whole_lines_at_the_summary_interval(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """#31: with output to a file the live line was rewritten with a carriage return every second and never ended
    (a log grew one endless line; a journal showed nothing). Now: newline-terminated summaries, one per
    `summary_s` (30 s by default; 0.5 s here), with the counts, the queue and the last error."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    shutil.copy(bottles(shared_data, 1)[0], inbox / "part.png")
    station = station_at(tmp_path / "state")
    assert WatchConfig().summary_s == 30.0
    started = time.monotonic()
    with watching(station, [str(inbox)], progress=True, summary_s=0.5):
        wait_for(lambda: len(rows(station)) == 2, what="both files")
        time.sleep(1.2)
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and err.endswith("\n")
    assert 2 <= len(lines) <= elapsed / 0.5 + 2, lines
    assert lines[-1].startswith("watch default: 1 scored") and "1 failed" in lines[-1] and "queue 0" in lines[-1]
    assert "last error: " in lines[-1] and "broken.png" in lines[-1]


def test_a_link_out_of_the_folder_is_skipped_with_one_line_and_nothing_outside_is_read_or_stored(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """#31: a symlink in the watched folder to a file outside it (`/etc/shadow` was tried) was copied into the store
    readable by everyone, and an image outside was scored through a link. Now a link is followed only to a file
    inside the folder; undecodable bytes are never stored; stored files are private (0600)."""
    inbox, outside = tmp_path / "inbox", tmp_path / "elsewhere"
    inbox.mkdir()
    outside.mkdir()
    secret, image = outside / "secret.png", bottles(shared_data, 2)
    secret.write_bytes(b"root:$6$not-an-image")
    shutil.copy(image[0], outside / "part.png")
    (inbox / "shadow.png").symlink_to(secret)
    (inbox / "outside.png").symlink_to(outside / "part.png")
    (inbox / ".camera").mkdir()  # hidden: not watched itself
    shutil.copy(image[1], inbox / ".camera" / "real.png")
    (inbox / "inside.png").symlink_to(inbox / ".camera" / "real.png")  # a link to a file inside: followed
    (inbox / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    station = station_at(tmp_path / "state")
    with watching(station, [str(inbox)]):
        wait_for(lambda: len(rows(station)) == 2, what="inside.png and garbage.png")
        time.sleep(1.0)  # the links out would be read by now
    recorded = {Path(r["source"]).name: r for r in rows(station)}
    assert set(recorded) == {"inside.png", "garbage.png"} and recorded["inside.png"]["error"] is None
    assert recorded["garbage.png"]["error"] and recorded["garbage.png"]["image_sha256"] is None
    stored = [p for p in (tmp_path / "state" / "blobs").rglob("*") if p.is_file()]
    contents = {p.read_bytes() for p in stored}
    assert secret.read_bytes() not in contents and (outside / "part.png").read_bytes() not in contents
    assert b"\x89PNG\r\n\x1a\n garbage" not in contents
    assert {oct(p.stat().st_mode & 0o777) for p in stored} == {"0o600"}
    warnings = [line for line in capsys.readouterr().err.splitlines() if "outside" in line]
    assert len(warnings) == 2 and all("skipped, never read" in w for w in warnings)
    assert {e["source"] for e in events(station, "source_error")} == {
        str(inbox / "shadow.png"),
        str(inbox / "outside.png"),
    }


def test_a_local_watch_uses_the_bank_and_threshold_the_station_was_given_meanwhile(
    tmp_path: Path, shared_data: Path
) -> None:
    """#31: a local watch kept the bank and threshold it started with; a change made through the station (here a
    second instance on the same state, as `serve` is) is used from the next batch once it has looked (2 s)."""
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    parts = bottles(shared_data, 3)
    station = station_at(state)
    with watching(station, [str(inbox)]):
        shutil.copy(parts[0], inbox / "first.png")
        wait_for(lambda: len(rows(station)) == 1, what="the first part")
        other = Station.open(base_run(), state)
        other.configure(
            "default", base_run(references=(str(next((shared_data / BOTTLE / "train/good").glob("*.png"))),))
        )
        other.set_thresholds("default", Thresholds(-1.0))
        bank = other.profile("default").bank_sha256
        time.sleep(2.5)
        shutil.copy(parts[1], inbox / "second.png")
        wait_for(lambda: len(rows(station)) == 2, what="the second part")
    first, second = rows(station)
    assert (first["image_threshold"], first["label"], first["bank_id"]) == (None, None, None)
    assert (second["image_threshold"], second["label"]) == (-1.0, 1)
    assert second["bank_id"] is not None and bank is not None


def test_a_file_written_with_pauses_longer_than_the_settle_is_recorded_once_and_whole(
    tmp_path: Path, shared_data: Path
) -> None:
    """#31: completion was a settle timer only, so a file written in 4 chunks with 2 s pauses (settle 1 s) was
    recorded as "corrupt or truncated" after its first chunk and never looked at again. Now a file that does not
    decode is tried again while it changes; and one truncated, closed, then completed later is recorded once, whole;
    one that stays undecodable for --corrupt-after is recorded once, as corrupt."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    slow, late = (p.read_bytes() for p in bottles(shared_data, 2))
    station = station_at(tmp_path / "state")
    with watching(station, [str(inbox)], settle_s=1.0, corrupt_after_s=4.0):
        with (inbox / "slow.png").open("wb") as f:
            for i in range(4):
                f.write(slow[i * len(slow) // 4 : (i + 1) * len(slow) // 4])
                f.flush()
                time.sleep(2.0 if i < 3 else 0.0)
        (inbox / "late.png").write_bytes(late[: len(late) // 2])  # closed: complete by inotify, yet truncated
        time.sleep(2.0)
        with (inbox / "late.png").open("ab") as f:
            f.write(late[len(late) // 2 :])
        (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n and nothing more")
        wait_for(lambda: len(rows(station)) == 3, what="three rows")
        time.sleep(1.5)  # a second row for any of them would land by now
    recorded = {Path(r["source"]).name: r for r in rows(station)}
    assert len(rows(station)) == 3
    for name, data in (("slow.png", slow), ("late.png", late)):
        assert recorded[name]["error"] is None, recorded[name]
        assert recorded[name]["image_sha256"] == hashlib.sha256(data).hexdigest()  # whole
    assert recorded["broken.png"]["error"] and recorded["broken.png"]["image_sha256"] is None
