"""Helpers shared by the tiers of the former tests/test_report.py."""

from __future__ import annotations

import base64
import io
import re

from PIL import Image


def _images(html: str) -> dict[str, list[Image.Image]]:
    """Every inline picture of a page, decoded, by its alt text."""
    found: dict[str, list[Image.Image]] = {}
    for data, alt in re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)"', html):
        found.setdefault(alt, []).append(Image.open(io.BytesIO(base64.b64decode(data))))
    return found
