"""Pictures people read: the evaluation report's plots, per-defect tables and captions, `detect --report`, and the
overlays' colour scale."""

from __future__ import annotations

import re
from pathlib import Path

from kanoclip.cli import main
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
