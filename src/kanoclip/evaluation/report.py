"""The HTML report kit shared by `evaluate`'s report and `detect --report`: one self-contained page (pictures inline
as data URIs, no CDN, no script), the config as a two-column table, the random-weights banner, captions, and the
gallery that keeps only the N most and least anomalous pictures of a run of any length.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from kanoclip.model.config import KAnoCLIPConfig

THUMB = 192  # the height of pictures in reports, in pixels; widths follow each image's aspect ratio
MAX_ASPECT = 3.0  # a panorama is cut to this width/height ratio's width

CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.key{text-align:left;font-family:monospace}td.value{text-align:left;font-family:monospace;
max-width:60em;overflow-wrap:anywhere}tr.mean{font-weight:bold;background:#f2f2f2}tr.changed td{background:#fff6d5}
.banner{background:#fde2e1;border:2px solid #c0392b;padding:.6em 1em;font-weight:bold;margin:1em 0}
figure{display:inline-block;margin:4px;vertical-align:top}figcaption{font-size:12px;max-width:40em;
overflow-wrap:anywhere}.plots img{border:1px solid #ddd}section{margin-bottom:2em}"""


def esc(value: object) -> str:
    return html.escape(str(value))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def figure(png: bytes, caption: str, alt: str) -> str:
    """A picture inline with its caption (already HTML)."""
    return f'<figure><img src="{data_uri(png)}" alt="{esc(alt)}"><figcaption>{caption}</figcaption></figure>'


def page(title: str, body: str) -> str:
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def random_weights_banner(random_weights: bool) -> str:
    """What a reader must see first when the backbone is random: the numbers measure the pipeline, not the method."""
    if not random_weights:
        return ""
    return (
        '<div class="banner" id="random-weights">Random CLIP weights: these numbers and pictures measure the '
        "pipeline, not the method. Use pretrained weights (the default backbone) for results.</div>"
    )


def config_table(facts: Mapping[str, Any]) -> str:
    """Facts (`run.json`, an evaluation's info) as a two-column table; nested dicts flattened to dotted keys. The
    settings the user chose (`user_set`: flags, a config file, the API's model changes) are marked, with the default
    beside a model config field; values the code derived (resolved layers, quick_gelu) are not."""
    chosen = set(facts.get("user_set") or ())
    defaults = {f"config.{k}": v for k, v in KAnoCLIPConfig().to_dict().items()}
    rows = []
    for key, value in _flatten({k: v for k, v in facts.items() if k != "user_set"}):
        changed = key in chosen
        default = f' <span title="default">(default {esc(_text(defaults[key]))})</span>' if key in defaults else ""
        mark = default if changed else ""
        rows.append(
            f'<tr{" class=changed" if changed else ""}><td class="key">{esc(key)}{" •" if changed else ""}</td>'
            f'<td class="value">{esc(_text(value))}{mark}</td></tr>'
        )
    legend = "<p>• set by you (flags, config file or API; highlighted).</p>" if chosen else ""
    return f"<table class='config'><tr><th>setting</th><th>value</th></tr>{''.join(rows)}</table>{legend}"


def _flatten(facts: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in facts.items():
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list | tuple | dict):
        return json.dumps(_plain(value))
    return str(value)


def score_digits(scores: Sequence[float], least: int = 3, most: int = 8) -> int:
    """The fewest decimals (at least `least`) at which different scores print differently: 0.5312 and 0.5304 need
    4, not 3."""
    distinct = sorted({float(s) for s in scores})
    for digits in range(least, most + 1):
        if len({f"{s:.{digits}f}" for s in distinct}) == len(distinct):
            return digits
    return most


def thumbnail(rgb: NDArray[np.uint8], height: int = THUMB) -> NDArray[np.uint8]:
    """The image at `height` pixels, its width following its aspect ratio (a tall KolektorSDD part stays tall)."""
    h, w = rgb.shape[:2]
    width = max(1, min(round(height * w / h), round(height * MAX_ASPECT)))
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))
