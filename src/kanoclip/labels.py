"""The two states of a part, named once.

Numbers (`label` in scores.csv, the API, webhooks) are the enum's values, 0 and 1; words (history, the page,
metrics, verdicts, reports, progress lines) are its names, `good` and `defect`. The sorted folders keep their
`ok/` and `ng/` names, mapped here. Earlier words are still accepted on input (`Label.parse`).
"""

from __future__ import annotations

from enum import IntEnum

from kanoclip.errors import ConfigError

# Words other outputs used before, and words datasets use, read as the enum's.
_OLD = {"ok": 0, "normal": 0, "good": 0, "ng": 1, "anomalous": 1, "anomaly": 1, "defect": 1, "defective": 1}


class Label(IntEnum):
    GOOD = 0
    DEFECT = 1

    @property
    def word(self) -> str:
        return self.name.lower()

    @property
    def folder(self) -> str:
        """The folder `watch --ok-dir/--ng-dir` sorts a part into."""
        return "ok" if self is Label.GOOD else "ng"

    @classmethod
    def parse(cls, value: object) -> Label:
        """0/1, good/defect, or an earlier word (ok/ng, normal/anomalous), in any case."""
        if isinstance(value, bool) or value in (0, 1):
            return cls(1 if value in (1, True) else 0)
        key = str(value).strip().lower()
        if key in ("0", "1"):
            return cls(int(key))
        if key in _OLD:
            return cls(_OLD[key])
        raise ConfigError(f"a label is good or defect (or 0/1), got {value!r}")


def word(label: int | None) -> str:
    """A label as its word, '-' for none."""
    return "-" if label is None else Label(label).word
