"""Pictures people read: the evaluation report's plots, per-defect tables and captions, `detect --report`, and the
overlays' colour scale."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

from kanoclip.cli import main
from kanoclip.evaluation.detect_report import write_report
from kanoclip.inference.outputs import RunFolder, detect_files
from tests.conftest import tiny_detector
from tests.support.report import _images
from tests.support.serving import TINY_FLAGS


def test_the_hazelnut_report_has_curves_a_per_defect_table_full_paths_and_the_random_weights_banner(
    shared_data: Path, tmp_path: Path
) -> None:
    root = shared_data / "MVTec_derived_hazelnut_toy"
    assert main(["evaluate", str(root), "--out", str(tmp_path), *TINY_FLAGS]) == 0
    html = (tmp_path / "report.html").read_text()
    pictures = _images(html)
    for kind in ("roc", "pr", "histogram"):
        (picture,) = pictures[f"{kind} hazelnut"]  # one per class, a decodable PNG
        picture.load()
        assert picture.size[0] > 200 and picture.size[1] > 200
    table = html.split("class='defects'>")[1].split("</table>")[0]
    assert re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td>", table) == [("good", "6"), ("colour", "17")]
    captions = re.findall(r"<figcaption>(?:best|worst): <b>([^<]+)</b>", html)
    assert captions and all(re.fullmatch(r"hazelnut/test/(good|colour)/\d+\.jpg", c) for c in captions)
    scores = re.findall(r"score (\d\.\d+)</figcaption>", html)
    assert len(set(scores)) == len(scores)  # enough digits to tell the cases apart
    assert 'id="random-weights"' in html and "not the method" in html
    assert "config.image_size •" in html  # changed from the default: marked
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].startswith("dataset,class,defect,images,image_auroc")
    assert any(r.startswith("MVTec_derived_hazelnut_toy,hazelnut,colour,17,") for r in rows)
    assert "http" not in html.replace("http-equiv", "")  # self-contained: nothing fetched


def test_detect_report_on_1000_images_keeps_memory_bounded_and_shows_both_ends(tmp_path: Path) -> None:
    """Python-side peak (tracemalloc: numpy and PIL buffers included, torch's own allocator not) over the whole
    run and report, against a bound far below what keeping every picture would take (1000 overlays at 32 x 32 and
    their maps: about 10 MB as arrays, many times that as the report's inline PNGs)."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1000):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    detector = tiny_detector(batch_size=16)
    tracemalloc.start()
    try:
        summary = detect_files(detector, [folder], tmp_path / "out")
        report = write_report(RunFolder(tmp_path / "out"), 5, summary.failed)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    html = report.read_text()
    pictures = _images(html)
    assert sum(len(v) for k, v in pictures.items() if k.startswith("overlay of")) == 10
    assert "broken.png" in html and "1000 images scored, 1 could not be read" in html
    assert len(pictures["score histogram"]) == 1
