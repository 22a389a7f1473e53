"""An append-only answer cache, so that generation resumes after any interruption without asking twice.

One JSON line per answer, written with a single `write` and flushed to disk before the next question is asked. A
line cut short by a crash is ignored on reading; a key is never written twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def answer_key(model: str, prompt: str, image_sha256: str = "") -> str:
    """The cache key: (server model, prompt, image content hash)."""
    return hashlib.sha256(json.dumps([model, prompt, image_sha256]).encode()).hexdigest()


class AnswerCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.answers: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    self.answers[record["key"]] = record["answer"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by a crash: its question is asked again

    def get(self, key: str) -> str | None:
        return self.answers.get(key)

    def put(self, key: str, answer: str) -> None:
        if key in self.answers:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"key": key, "answer": answer}) + "\n"
        with self.path.open("ab") as f:
            if f.tell() > 0 and not self._ends_with_newline():
                f.write(b"\n")  # never glue a record onto a line cut short by a crash
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())
        self.answers[key] = answer

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
