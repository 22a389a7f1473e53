"""`kanoclip watch`: hot folders, video files and camera streams scored into the station's history, exactly once.

Sources (a `HotFolder`, or `video.frames` of a file or live source) run on their own threads and put items on one
bounded queue; the scoring loop takes them in batches, scores them with the profile's model, bank and thresholds and
records each as a result (in-process on the station's database, or through a running `serve` with `--server`).

The history is the ledger: a file is claimed (`Station.claim`) before it is scored, and the claim is completed in
the transaction that records its result, so a file is recorded once across restarts and across several watchers on
one database. Each scorer holds its claims under its own holder id (one per process, sent to the server with
`--server`), and only the holder of a claim records it: a watcher whose claim was taken over records nothing. A
claim left by a watcher that died is taken over after `claim_timeout_s`; a watcher that stops (Ctrl-C, SIGTERM, the
end of its sources) releases what it holds, so the next start takes those files at once. Files are then moved (or
copied) into `--ok-dir`/`--ng-dir` by their label, atomically; a file already recorded is sorted by its recorded
label on the next start, so a crash between the two never leaves it unsorted.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import io
import itertools
import math
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from kanoclip._files import make_folders, sync_folder
from kanoclip.data.images import ImageLimits, decode
from kanoclip.data.video import frames, is_live, is_video
from kanoclip.errors import ConfigError, KanoclipError
from kanoclip.inference.detector import Prediction
from kanoclip.labels import Label
from kanoclip.station.claims import new_holder
from kanoclip.station.results import scored_with
from kanoclip.station.sinks.fanout import Sinks
from kanoclip.station.sinks.message import message, result_fields
from kanoclip.station.station import Detection, Station
from kanoclip.station.watch.config import WatchConfig
from kanoclip.station.watch.hotfolder import HotFolder, OutsideFolder

LIVE_S = 1.0  # on a terminal, the progress line is rewritten this often
FOLLOW_S = 2.0  # a local watcher looks this often for changes made to its profile through the station
RETRY_FIRST_S, RETRY_MAX_S = 0.25, 5.0  # a file that does not decode yet is tried again after these, doubling
RETRY_SERVER_MAX_S, SAY_EVERY_S = 30.0, 60.0  # a server away: tried at most this far apart; said this often


@dataclass
class _Broken:
    identity: tuple[int, int] | None  # (size, mtime) when it last failed to decode
    unchanged_since: float
    delay: float  # until its next try


@dataclass
class Item:
    source: str
    data: bytes | None = None  # the file's bytes; a frame's JPEG
    rgb: NDArray[np.uint8] | None = None
    key: str | None = None
    path: Path | None = None  # the file to sort into ok/ng
    frame_index: int | None = None
    frame_time: float | None = None
    error: str | None = None
    arrived: float = field(default_factory=time.monotonic)


class Scorer(Protocol):
    """Where items are scored and recorded: in this process (`LocalScorer`) or by a running server."""

    def claim(self, key: str, source: str, timeout_s: float) -> tuple[str, int | None]: ...
    def score(self, items: list[Item]) -> list[dict[str, Any]]: ...
    def event(self, source: str, kind: str, detail: str) -> None: ...
    def labelled(self) -> bool: ...
    def release(self) -> int: ...

    limits: ImageLimits


class LocalScorer:
    """Scores in this process, on the station's database, holding its claims under its own holder id."""

    def __init__(self, station: Station, profile: str, follow_s: float = FOLLOW_S) -> None:
        self.station, self.profile, self.holder = station, profile, new_holder()
        self.detector = station.detector(profile)
        self.follow_s, self.looked = follow_s, time.monotonic()
        self.limits = self.detector.limits  # what the folder's reader decodes under

    def _follow(self) -> None:
        """The profile as the station has it now: a bank, threshold or model changed through `serve` (or another
        instance) since this watcher last looked is used from the next batch on (scoring thread)."""
        if time.monotonic() - self.looked < self.follow_s:
            return
        self.looked = time.monotonic()
        if self.profile in self.station.changed_profiles():
            self.detector = self.station.detector(self.profile)

    def labelled(self) -> bool:
        return self.detector.thresholds.image_threshold is not None

    def claim(self, key: str, source: str, timeout_s: float) -> tuple[str, int | None]:
        state = self.station.claim(self.profile, key, source, timeout_s, self.holder)
        return state, self.station.claimed_label(key) if state == "done" else None

    def release(self) -> int:
        return self.station.release(self.holder)

    def score(self, items: list[Item]) -> list[dict[str, Any]]:
        self._follow()
        det, start = self.detector, time.perf_counter()
        arrays, readable = [], []
        for item in items:
            if item.rgb is None and item.error is None and item.data is not None:
                try:
                    item.rgb = decode(item.data, item.source, det.limits)
                except KanoclipError as e:
                    item.error = str(e)
            if item.rgb is not None:
                arrays.append(item.rgb)
                readable.append(item)
        used = scored_with(det)  # what the forward pass scores with, recorded as such whatever changes meanwhile
        predicted = dict(zip(map(id, readable), det.predict_many(arrays), strict=True)) if arrays else {}
        latency = 1000 * (time.perf_counter() - start)
        detections = [
            Detection(
                item.source,
                item.data if item.rgb is not None and item.data else b"",  # undecodable bytes are never stored
                item.rgb if item.rgb is not None else np.zeros((1, 1, 3), np.uint8),
                predicted.get(id(item)) or Prediction(item.source, error=item.error or "unreadable"),
                key=item.key,
                holder=self.holder,
                used=used,
                frame_index=item.frame_index,
                frame_time=item.frame_time,
            )
            for item in items
        ]
        self.station.record(self.profile, det, detections, latency)
        return [_answer(d) for d in detections]

    def event(self, source: str, kind: str, detail: str) -> None:
        self.station.event(self.profile, source, kind, detail)


class RemoteScorer:
    """A running `kanoclip serve`: each item is POSTed with its claim key and this scorer's holder id, and the server
    claims and records it under that holder (two watchers through one server never share a claim)."""

    def __init__(self, url: str, profile: str, api_key: str | None, claim_timeout_s: float) -> None:
        import httpx

        self.url, self.profile, self.claim_timeout_s = url.rstrip("/"), profile, claim_timeout_s
        self.limits = ImageLimits()  # the folder's reader checks a file decodes; the server applies its own limits
        self.stopping = threading.Event()  # the watcher's: a server away is waited for until it stops
        self.holder = new_holder()
        self.client = httpx.Client(timeout=300, headers={"X-API-Key": api_key} if api_key else {})
        try:
            response = self.client.get(f"{self.url}/v1/profiles/{profile}")
        except httpx.HTTPError as e:
            raise ConfigError(f"cannot reach the station at {self.url}: {e}; is `kanoclip serve` running?") from e
        if response.status_code != 200:
            raise ConfigError(f"{self.url}: profile {profile!r}: {response.json().get('detail', response.text)}")
        self.thresholded = response.json()["thresholds"]["image_threshold"] is not None

    def labelled(self) -> bool:
        return self.thresholded

    def claim(self, key: str, source: str, timeout_s: float) -> tuple[str, int | None]:
        return "mine", None  # the server claims when it scores (`source_key`)

    def release(self) -> int:
        """The server releases this holder's unfinished claims (best effort: a server gone keeps them till timeout)."""
        import httpx

        try:
            response = self.client.post(f"{self.url}/v1/claims/release", json={"holder": self.holder})
        except httpx.HTTPError:
            return 0
        return int(response.json().get("released", 0)) if response.status_code == 200 else 0

    def score(self, items: list[Item]) -> list[dict[str, Any]]:
        """Each item POSTed until the server answers: a connection error or a 5xx (a restart, an overload) is tried
        again with backoff, for ever, while the watcher runs; a 409 (held by another watcher) is busy; another 4xx
        refuses that one file, which is recorded as an event, and the next goes on."""
        out: list[dict[str, Any]] = []
        for item in items:
            if item.data is None:
                out.append({"source": item.source, "error": item.error, "label": None})
                continue
            params: dict[str, Any] = {"claim_timeout_s": self.claim_timeout_s, "holder": self.holder}
            if item.key:
                params["source_key"] = item.key
            for name, value in (("frame_index", item.frame_index), ("frame_time", item.frame_time)):
                if value is not None:
                    params[name] = value
            response = self._answered(params, item.source, item.data)
            if response is None or response.status_code == 409:  # stopping, or another watcher holds it
                out.append({"source": item.source, "busy": True, "label": None})
                continue
            if response.status_code != 200:
                error = f"the server refused it: HTTP {response.status_code}: {_detail(response)}"
                self.event(item.source, "source_error", error)
                out.append({"source": item.source, "error": error, "label": None})
                continue
            body = response.json()
            r = body["results"][0]
            out.append(
                {
                    "source": item.source,
                    "id": r.get("result_id"),
                    "score": r.get("score"),
                    "label": r.get("label"),
                    "error": r.get("error"),
                    "threshold": body.get("threshold"),
                }
            )
        return out

    def _answered(self, params: dict[str, Any], source: str, data: bytes) -> Any:
        """The server's answer other than a 5xx; None once the watcher stops while the server is away."""
        import httpx

        delay, said = RETRY_FIRST_S, -math.inf
        while not self.stopping.is_set():
            try:
                response = self.client.post(
                    f"{self.url}/v1/profiles/{self.profile}/detect",
                    params=params,
                    files=[("files", (source, data))],
                )
                if response.status_code < 500:
                    return response
                error = f"HTTP {response.status_code}: {_detail(response)}"
            except httpx.TransportError as e:
                error = f"{type(e).__name__}: {e}"
            if time.monotonic() - said >= SAY_EVERY_S:  # once a minute, not once a try
                said = time.monotonic()
                print(f"kanoclip watch: {self.url}: {error}; trying again (files wait)", file=sys.stderr, flush=True)
            self.stopping.wait(delay)
            delay = min(2 * delay, RETRY_SERVER_MAX_S)
        return None

    def event(self, source: str, kind: str, detail: str) -> None:
        """Into the server's history (best effort: a server away loses the event, never the watcher)."""
        import httpx

        try:
            self.client.post(
                f"{self.url}/v1/events",
                json={"profile": self.profile, "source": source, "kind": kind, "detail": detail},
            )
        except httpx.HTTPError as e:
            print(f"kanoclip watch: {self.url}: event not recorded ({kind} {source}): {e}", file=sys.stderr)


def _detail(response: Any) -> str:
    """A server's error as it says it (FastAPI's `detail`), else the start of its body."""
    try:
        return str(response.json().get("detail", response.text))[:300]
    except ValueError:
        return str(response.text[:300])


def _answer(d: Detection) -> dict[str, Any]:
    # busy: taken over while scored: the new holder records and sorts it; the threshold its pass was judged by
    return {**result_fields(d), "busy": d.lost, "threshold": (d.used or {}).get("image_threshold")}


def file_key(profile: str, path: Path, data: bytes) -> str:
    """One file, one result: the profile, where it lies and what it holds (the same bytes copied in again are
    the same part)."""
    content = hashlib.sha256(data).hexdigest()
    return hashlib.sha256(f"{profile}\0{path.resolve()}\0{content}".encode()).hexdigest()


def frame_key(profile: str, path: Path, index: int) -> str:
    st = path.stat()
    return hashlib.sha256(f"{profile}\0{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{index}".encode()).hexdigest()


def jpeg(rgb: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


class Retries:
    """When each file put off (busy, not yet decodable) is looked at again: shared by the folder threads, which
    take their own, and the scoring loop, which puts back what a server or another watcher held. A file put off
    again waits twice as long as the last time, up to `RETRY_MAX_S`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.when: dict[Path, float] = {}
        self.delay: dict[Path, float] = {}

    def at(self, path: Path, when: float) -> None:
        with self.lock:
            self.when[path] = when

    def later(self, path: Path, now: float) -> None:
        with self.lock:
            delay = self.delay[path] = min(2 * self.delay.get(path, RETRY_FIRST_S), RETRY_MAX_S)
            self.when[path] = now + delay

    def drop(self, path: Path, backoff: bool = False) -> None:
        """Not due any more (and, with `backoff`, done: its delay forgotten)."""
        with self.lock:
            self.when.pop(path, None)
            if backoff:
                self.delay.pop(path, None)

    def due(self, folder: Path, now: float) -> list[Path]:
        """The files of `folder` due now, taken off the schedule."""
        with self.lock:
            paths = [p for p, at in self.when.items() if at <= now and p.is_relative_to(folder)]
            for p in paths:
                del self.when[p]
        return paths


class Watcher:
    def __init__(self, scorer: Scorer, sources: list[str], cfg: WatchConfig) -> None:
        if not sources:
            raise ConfigError("watch needs at least one SOURCE: a folder, a video file, /dev/videoN or a stream URL")
        if (cfg.ok_dir or cfg.ng_dir) and not scorer.labelled():
            raise ConfigError(
                f"--ok-dir/--ng-dir sort by label, and profile {cfg.profile!r} has no threshold: calibrate it first "
                f"(POST /v1/profiles/{cfg.profile}/calibrate) or give --threshold"
            )
        self.scorer, self.cfg = scorer, cfg
        self.folders: list[HotFolder] = []
        self.videos: list[str] = []
        for source in sources:
            if is_video(source):
                if not is_live(source) and not Path(source).is_file():
                    raise ConfigError(f"{source}: no such video file")
                self.videos.append(source)
            else:
                sorted_into = tuple(d for d in (cfg.ok_dir, cfg.ng_dir) if d is not None)
                hot = HotFolder(Path(source), cfg.settle_s, cfg.max_wait_s, cfg.poll, cfg.existing, sorted_into)
                self.folders.append(hot)
        for d in (cfg.ok_dir, cfg.ng_dir):
            if d is not None:
                make_folders(d)
        self.queue: queue.Queue[Item] = queue.Queue(maxsize=max(4 * cfg.batch, 16))
        self.stopping = scorer.stopping if isinstance(scorer, RemoteScorer) else threading.Event()
        self.threads: list[threading.Thread] = []
        engine = scorer.station.engine if isinstance(scorer, LocalScorer) else None  # a state: sinks keep there
        self.sinks = Sinks.open(
            cfg.sinks, lambda m, kind, why: self.scorer.event(str(m.get("source")), kind, why), engine
        )
        self.counts = {"scored": 0, Label.DEFECT.word: 0, "failed": 0, "skipped": 0}
        self.sequence = itertools.count(1)  # the sorted copies' numbers
        self.retry = Retries()
        self.last_error: str | None = None  # for the progress summary
        self.latencies: list[float] = []  # seconds from a file found complete to its result recorded
        self.on_result: Callable[[dict[str, Any]], None] | None = None

    # -- sources -----------------------------------------------------------------------------------------------------
    def _folder(self, hot: HotFolder) -> None:
        retry = self.retry
        refused: set[Path] = set()
        broken: dict[Path, _Broken] = {}  # complete by the folder's signs, yet not (yet) a whole image
        while not self.stopping.is_set():
            complete, never = hot.ready()
            now = time.monotonic()
            for path in complete:  # complete again (written to since): its pending retry is this look
                retry.drop(path)
            complete += retry.due(hot.folder, now)
            for path in never:
                self.scorer.event(str(path), "never_completed", f"still changing after {self.cfg.max_wait_s:g} s")
                self.counts["failed"] += 1
            for path in complete:
                if self.stopping.is_set():  # stopping: claim nothing more (what is claimed is released)
                    break
                try:
                    data = hot.read(path)
                except OutsideFolder as e:
                    if path not in refused:  # one line per path, not one per look
                        refused.add(path)
                        print(f"kanoclip watch: {e}", file=sys.stderr, flush=True)
                        self.scorer.event(str(path), "source_error", str(e))
                    continue
                except OSError as e:
                    self.scorer.event(str(path), "source_error", f"cannot read: {e.strerror or e}")
                    continue
                try:
                    rgb, error = decode(data, str(path), self.scorer.limits), None
                    broken.pop(path, None)
                except KanoclipError as e:
                    if self._still_completing(path, broken, now):
                        retry.at(path, now + broken[path].delay)
                        continue
                    rgb, error = None, str(e)  # unchanged for --corrupt-after: recorded once, as corrupt
                key = file_key(self.cfg.profile, path, data)
                state, label = self.scorer.claim(key, str(path), self.cfg.claim_timeout_s)
                if state == "done":
                    self.counts["skipped"] += 1
                    self._sort(path, label)  # recorded before a crash, not yet sorted
                elif state == "busy":  # another watcher holds it: looked at again, less often each time
                    retry.later(path, now)
                else:
                    self._put(Item(str(path), data, rgb, key=key, path=path, error=error))
            self.stopping.wait(0.1)

    def _still_completing(self, path: Path, broken: dict[Path, _Broken], now: float) -> bool:
        """After a file failed to decode: False once it has stayed unchanged (size, mtime) for --corrupt-after
        (it is corrupt); else True, and its next try is due after a delay that doubles while it stays as it is."""
        try:
            st = path.stat()
            identity: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            identity = None
        b = broken.get(path)
        if b is None or b.identity != identity:  # new, or written to since: the writer is still at it
            broken[path] = _Broken(identity, now, RETRY_FIRST_S)
            return True
        if now - b.unchanged_since >= self.cfg.corrupt_after_s:
            del broken[path]
            return False
        b.delay = min(2 * b.delay, RETRY_MAX_S)
        return True

    def _video(self, source: str) -> None:
        live = is_live(source)

        def gap(seconds: float, reason: str) -> None:
            self.scorer.event(source, "stream_gap", f"{reason}: no frames for {seconds:.1f} s, reconnected")

        while not self.stopping.is_set():
            try:
                for f in frames(source, self.cfg.fps, gap, self.stopping.is_set):
                    name = f"{source}#frame={f.index}"
                    key = None if live else frame_key(self.cfg.profile, Path(source), f.index)
                    if key is not None:
                        state, _ = self.scorer.claim(key, name, self.cfg.claim_timeout_s)
                        if state != "mine":
                            continue
                    data = None if f.rgb is None else jpeg(f.rgb)
                    self._put(Item(name, data, f.rgb, key, None, f.index, f.time_s, f.error))
                if not live:
                    return  # the end of the file
            except ConfigError as e:  # cannot open: recorded, and a live source is tried again
                self.scorer.event(source, "source_error", str(e))
                if not live:
                    print(f"kanoclip watch: {e}", file=sys.stderr)
                    return
                self.stopping.wait(5.0)

    def _put(self, item: Item) -> None:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # -- scoring ---------------------------------------------------------------------------------------------------
    def run(self, until: Callable[[], bool] = lambda: False) -> dict[str, int]:
        """Watch until interrupted (Ctrl-C or SIGTERM), `until()` says so, or every source is a finished video file;
        then release the claims still held."""
        # SIGTERM stops like Ctrl-C (after the batch being scored), so a service manager's stop releases the claims
        # and exits 0; only the main thread may set a handler
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, lambda *_: self.stopping.set()) if main else None
        try:
            return self._run(until)
        finally:
            if main:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    def _run(self, until: Callable[[], bool]) -> dict[str, int]:
        for hot in self.folders:
            hot.start()
            self.threads.append(threading.Thread(target=self._folder, args=(hot,), daemon=True))
        for source in self.videos:
            self.threads.append(threading.Thread(target=self._video, args=(source,), daemon=True))
        for t in self.threads:
            t.start()
        started = shown = time.monotonic()
        live = sys.stderr.isatty()  # a terminal: one line rewritten; a log or a journal: a line every summary_s
        try:
            while not until() and not self.stopping.is_set():
                batch = self._take()
                if batch:
                    self._score(batch)
                elif not self.folders and not any(t.is_alive() for t in self.threads):
                    break
                if self.cfg.progress and time.monotonic() - shown >= (LIVE_S if live else self.cfg.summary_s):
                    shown = time.monotonic()
                    self._progress(shown - started, live)
        except KeyboardInterrupt:
            pass
        finally:
            self.stopping.set()
            for hot in self.folders:
                hot.stop()
            for t in self.threads:
                t.join(timeout=10)
            self.scorer.release()  # claimed, not recorded: the next watcher takes them now, not after the timeout
            self.sinks.close()
            if self.cfg.progress:
                self._progress(time.monotonic() - started, live)
                if live:
                    print(file=sys.stderr)
        return dict(self.counts)

    def _take(self) -> list[Item]:
        try:
            batch = [self.queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(batch) < self.cfg.batch:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _score(self, batch: list[Item]) -> None:
        results = self.scorer.score(batch)
        now = time.monotonic()
        for item, result in zip(batch, results, strict=True):
            if result.get("busy"):  # held by another watcher, or the server was stopping: tried again later
                if item.path is not None and not self.stopping.is_set():
                    self.retry.later(item.path, now)
                continue
            if item.path is not None:
                self.retry.drop(item.path, backoff=True)
            self.latencies.append(now - item.arrived)
            if result.get("error"):
                self.counts["failed"] += 1
                self.last_error = f"{result.get('source')}: {result.get('error')}"
            else:
                self.counts["scored"] += 1
                self.counts[Label.DEFECT.word] += int(result.get("label") == Label.DEFECT)
                if item.path is not None:
                    self._sort(item.path, result.get("label"))
            self.sinks.send(message(self.cfg.profile, result, result.get("threshold")))
            if self.on_result is not None:
                self.on_result(result)

    def _sort(self, path: Path, label: int | None) -> None:
        """Into --ok-dir or --ng-dir by label (unlabelled and failed files stay), under a name of its own: the UTC
        time, a sequence number and its name, so a camera that writes every part as `cam.png` keeps every part."""
        target = (
            {Label.GOOD: self.cfg.ok_dir, Label.DEFECT: self.cfg.ng_dir}.get(Label(label))
            if label is not None
            else None
        )
        if target is None or not path.exists():
            return
        while True:
            try:
                place(path, target / sorted_name(path.name, next(self.sequence)), self.cfg.copy)
                return
            except FileExistsError:  # another watcher's part under the same name: the next number
                continue

    def _progress(self, elapsed: float, live: bool) -> None:
        """The counts so far: on a terminal one line rewritten in place; else a whole line (a log file or a
        journal, which shows a line once it ends), with the last error."""
        c = self.counts
        rate = c["scored"] / elapsed if elapsed > 0 else 0.0
        line = (
            f"watch {self.cfg.profile}: {c['scored']} scored ({rate:.1f}/s), {c['defect']} defect, "
            f"{c['failed']} failed, {c['skipped']} already done, queue {self.queue.qsize()}"
        )
        if live:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
        else:
            good = c["scored"] - c["defect"]
            print(f"{line} ({good} good); last error: {self.last_error or 'none'}", file=sys.stderr, flush=True)


def sorted_name(name: str, sequence: int) -> str:
    """`20261204T081502.120Z_000042_cam.png`: sorts by when it was sorted, and never equals another part's."""
    now = dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z_{sequence:06d}_{name}"


def place(source: Path, destination: Path, copy: bool) -> None:
    """Move (or copy) a file so that it appears whole in `destination` or not at all, and never over a file already
    there (`FileExistsError`): a hard link then an unlink on one filesystem; across filesystems a copy into a hidden
    temporary beside the destination, synced, linked into place, then the source removed. Each folder whose names
    changed is synced, so a crash after this returns neither loses the part nor finds it in both places."""
    if not copy:
        try:
            if _link_new(source, destination):
                source.unlink()
            sync_folder(source.parent)
            return
        except OSError as e:
            if e.errno != errno.EXDEV:  # another filesystem: copy, then remove
                raise
    fd, tmp = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as f:
            shutil.copyfileobj(f, out)
            out.flush()
            os.fsync(out.fileno())
        shutil.copystat(source, tmp)
        _link_new(Path(tmp), destination)
    finally:
        Path(tmp).unlink(missing_ok=True)
    if not copy:
        source.unlink()
        sync_folder(source.parent)


def _link_new(source: Path, destination: Path) -> bool:
    """`destination` becomes a name of `source`'s file, only if it is free (a rename would replace a file there):
    True, and the caller removes the source's name. On a filesystem without hard links, a rename once the name is
    seen free: False, the source's name is gone already. The destination's folder is synced."""
    try:
        os.link(source, destination)
        linked = True
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if destination.exists():
            raise FileExistsError(errno.EEXIST, "a sorted part is there already", str(destination)) from e
        os.rename(source, destination)
        linked = False
    sync_folder(destination.parent)
    return linked
