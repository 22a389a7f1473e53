"""Frames from video files, cameras and streams (OpenCV's `VideoCapture`), sampled at a given rate.

OpenCV rather than PyAV: one wheel (opencv-python-headless) reads files and rtsp/http streams through FFmpeg and
`/dev/video*` cameras through V4L2, while PyAV's wheels carry no V4L2 input; it also writes the annotated video.
Files are sampled on their own clock (frame index / the file's frame rate), live sources on the wall clock. A live
source that drops is reopened with backoff, and the gap is reported; a file's frame that cannot be decoded is
reported and skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kanoclip.errors import ConfigError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
OPENCV_EXTRA = "pip install 'kanoclip[video]'  (opencv-python-headless)"
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
MAX_BAD_FRAMES = 25  # consecutive undecodable frames of a file before it is given up


def is_video(source: str) -> bool:
    return is_live(source) or Path(source).suffix.lower() in VIDEO_SUFFIXES


def is_live(source: str) -> bool:
    return source.startswith(("rtsp://", "rtsps://", "http://", "https://", "/dev/video")) or source.isdigit()


@dataclass
class Frame:
    index: int  # in the file, or counted from the start for a live source
    time_s: float  # the file's own time, or the wall clock (seconds since the epoch) for a live source
    rgb: NDArray[np.uint8] | None  # None: this frame could not be decoded (`error` says why)
    error: str | None = None


def opencv() -> Any:
    try:
        import cv2
    except ImportError as e:
        raise ConfigError(f"video needs OpenCV: {OPENCV_EXTRA}") from e
    return cv2


def _open(source: str) -> Any:
    cv2 = opencv()
    if source.startswith("/dev/video") or source.isdigit():
        capture = cv2.VideoCapture(int(source.removeprefix("/dev/video")), cv2.CAP_V4L2)
    else:
        capture = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
    return capture


def open_checked(source: str) -> Any:
    """A capture that delivers frames, or a clear error: missing file, undecodable codec, unreachable stream."""
    if not is_live(source) and not Path(source).is_file():
        raise ConfigError(f"{source}: no such video file")
    capture = _open(source)
    if not capture.isOpened():
        capture.release()
        what = (
            "stream or camera cannot be opened (unreachable, or not a video)"
            if is_live(source)
            else ("cannot be opened as video (not a video, or a codec this OpenCV cannot decode)")
        )
        raise ConfigError(f"{source}: {what}")
    return capture


def frames(
    source: str,
    fps: float | None,
    on_gap: Callable[[float, str], None] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[Frame]:
    """The source's frames, one per 1/`fps` seconds (None: every frame). For live sources `on_gap(seconds, reason)`
    is called after a drop once frames flow again; `stop()` ends the loop."""
    live = is_live(source)
    capture = open_checked(source)
    cv2 = opencv()
    try:
        native = capture.get(cv2.CAP_PROP_FPS) or 0.0
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not live else 0
        step = 1 if fps is None or live or native <= 0 else max(1, round(native / fps))
        index, kept_at, bad = -1, -float("inf"), 0
        while not stop():
            ok = capture.grab()
            index += 1
            if not ok:
                if not live:
                    if total and index < total - 1 and bad < MAX_BAD_FRAMES:
                        bad += 1
                        yield Frame(index, index / native if native > 0 else 0.0, None, "the frame cannot be decoded")
                        continue
                    return  # the end of the file
                dropped = time.time()
                capture.release()
                capture = _reopen(source, stop)
                if capture is None:
                    return
                if on_gap is not None:
                    on_gap(time.time() - dropped, "the stream dropped")
                continue
            if live:
                now = time.time()
                if fps is not None and now - kept_at < 1 / fps:
                    continue
                kept_at = now
                when = now
            else:
                if index % step:
                    continue
                when = index / native if native > 0 else float(index)
            ok, bgr = capture.retrieve()
            if not ok or bgr is None:
                bad += 1
                if bad > MAX_BAD_FRAMES and not live:
                    return
                yield Frame(index, when, None, "the frame cannot be decoded")
                continue
            bad = 0
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
            yield Frame(index, when, np.ascontiguousarray(rgb))
    finally:
        if capture is not None:
            capture.release()


def _reopen(source: str, stop: Callable[[], bool]) -> Any:
    """Reopen a dropped live source, waiting 0.5, 1, 2, ... 30 s between tries, until it answers or `stop()`."""
    attempt = 0
    while not stop():
        time.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
        attempt += 1
        capture = _open(source)
        if capture.isOpened():
            return capture
        capture.release()
    return None
