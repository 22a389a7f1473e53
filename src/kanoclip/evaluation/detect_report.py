"""`detect --report`: one HTML page built from a finished run's folder, the same for local, Ray and video runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kanoclip._files import atomic_write_bytes
from kanoclip.data.images import read_image, to_png
from kanoclip.errors import ConfigError
from kanoclip.evaluation import plots
from kanoclip.evaluation.report import config_table, esc, figure, page, random_weights_banner, score_digits, thumbnail
from kanoclip.inference.outputs import SCORES, RunFolder
from kanoclip.labels import word


def write_report(folder: RunFolder, count: int, failed: Sequence[tuple[str, str]]) -> Path:
    """`detect --report`: `report.html` beside `scores.csv`, built from the finished run's files, so local, Ray and
    video runs (and resumed ones) get the same page: the score histogram with the threshold, the `count` most and
    least anomalous overlays, the files that could not be read and `run.json`'s facts. Memory: the scores, and the
    2 x `count` thumbnails it shows, whatever the number of images."""
    facts = folder.read_run()
    labelled = folder.labelled()
    rows = list(folder.scored_rows(labelled).values())
    if rows and not folder.save_maps:
        raise ConfigError("--report shows overlays: run without --no-maps")
    threshold = facts["thresholds"]["image_threshold"]
    scores = np.array([r.score for r in rows], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    top, bottom = order[:count], order[::-1][:count]
    digits = score_digits(scores[np.r_[top, bottom]].tolist())

    def gallery(picks: np.ndarray) -> str:
        shown = []
        for i in picks:
            row = rows[int(i)]
            assert row.map is not None and row.score is not None
            name = row.map.removeprefix("maps/").removesuffix(".npy")
            picture = read_image(folder.out / f"maps/{name}.overlay.png")
            label = "" if row.label is None else " " + word(row.label)
            caption = f"<b>{esc(name)}</b>, score {row.score:.{digits}f}{label}"
            shown.append(figure(to_png(thumbnail(picture)), caption, f"overlay of {name}"))
        return "".join(shown)

    lines = {"image threshold": threshold}
    histogram = plots.histogram_png({"images": scores}, lines, f"{len(rows)} image scores") if rows else b""
    unreadable = "".join(f"<li>{esc(reason)}</li>" for _, reason in failed)
    body = f"""<h1>kanoclip detect</h1>{random_weights_banner(bool(facts.get("random_weights")))}
<p>{len(rows)} images scored, {len(failed)} could not be read{
        ""
        if threshold is None
        else f", {int(sum(r.label or 0 for r in rows))} at or above the image threshold {threshold:.4g}"
    }. Scores and labels in
<code>{SCORES}</code>; each overlay (on the run's colour scale, bar below it) is in <code>maps/</code>.</p>
{figure(histogram, "score histogram", "score histogram") if rows else ""}
<h2>Most anomalous</h2><div>{gallery(top)}</div>
<h2>Least anomalous (to spot false alarms among them: they should all be good parts)</h2><div>{gallery(bottom)}</div>
<h2>Unreadable files</h2>{f"<ul>{unreadable}</ul>" if unreadable else "<p>none</p>"}
<h2>Run</h2>{config_table(facts)}"""
    path = folder.out / "report.html"
    atomic_write_bytes(path, page("kanoclip detect", body).encode())
    return path
