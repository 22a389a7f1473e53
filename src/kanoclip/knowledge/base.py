"""The knowledge base: normal/abnormal sentences per class (LLM) and one sentence per image (VQA) (SPEC §3.2.1, I6).

A general-knowledge file is {"header": {...}, "classes": {key: {"subject", "datasets", "names", "aliases", "terms",
"normal": [...], "abnormal": [...]}}, "failures": [...]}; an image-knowledge file is {"header": {...}, "images": {path:
{"label": 0|1, "text": ...}}, "failures": [...]}. The package ships a general file for every class of the field's
benchmarks plus class-agnostic "object", and beside it the published defect types per entry (`defect_types.json`).
"""

from __future__ import annotations

import difflib
import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kanoclip._files import atomic_write_json
from kanoclip.errors import KnowledgeError

AGNOSTIC = "object"
_WARNED: set[str] = set()  # unknown class names already said in this process


@dataclass
class ClassKnowledge:
    """One entry. `subject` fills the prompts' {name} ("metal nut"); `names` are class names served exactly (VisA's
    pcb1..pcb3 share one entry); `aliases` are folder-name fragments ("kvasir" in "kvasir_seg"); `terms` are the
    words by which a sentence names the object (the lint's check)."""

    normal: list[str]
    abnormal: list[str]
    aliases: list[str] = field(default_factory=list)
    subject: str = ""
    datasets: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    terms: list[str] = field(default_factory=list)


@dataclass
class KnowledgeBase:
    """General knowledge per class; `lookup` falls back to the class-agnostic "object" entry."""

    classes: dict[str, ClassKnowledge]
    header: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None) -> KnowledgeBase:
        """The shipped base, or a file written by `kanoclip knowledge general`."""
        if path is None:
            text = resources.files("kanoclip.knowledge").joinpath("data/general.json").read_text()
            where = "the shipped knowledge base"
        else:
            where = str(path)
            try:
                text = Path(path).expanduser().read_text()
            except OSError as e:
                raise KnowledgeError(f"cannot read knowledge file {path}: {e.strerror}") from e
        document = _parse(text, where)
        entries = document.get("classes")
        if not isinstance(entries, dict) or not entries:
            raise KnowledgeError(f"{where}: expected a 'classes' mapping (written by `kanoclip knowledge general`)")
        classes = {}
        for name, entry in entries.items():
            if not isinstance(entry, dict):
                raise KnowledgeError(f"{where}: class {name!r} must be an object with 'normal' and 'abnormal' lists")
            normal, abnormal = entry.get("normal") or [], entry.get("abnormal") or []
            if not normal or not abnormal:
                raise KnowledgeError(f"{where}: class {name!r} needs both normal and abnormal sentences")
            described = {f: list(entry.get(f, [])) for f in ("aliases", "datasets", "names", "terms")}
            classes[name] = ClassKnowledge(
                list(normal), list(abnormal), subject=str(entry.get("subject", "")), **described
            )
        return cls(classes, document.get("header", {}))

    def lookup(self, name: str) -> tuple[str, ClassKnowledge]:
        """The entry for a class name as a loader reports it: the key, one of its names (either exact or ignoring
        case), the longest alias that starts a word of the name ("kvasir" in "kvasir_seg" but "hyperkvasir" in
        "hyperkvasir"; "his" not in "this"), else "object"."""
        if name in self.classes:
            return name, self.classes[name]
        lowered = name.lower()
        for key, entry in self.classes.items():
            if lowered in (n.lower() for n in [key, *entry.names]):
                return key, entry
        matches = [
            (len(alias), key)
            for key, entry in self.classes.items()
            for alias in entry.aliases
            if re.search(rf"(?<![a-z]){re.escape(alias.lower())}", lowered)
        ]
        if matches:
            key = max(matches)[1]
            return key, self.classes[key]
        if AGNOSTIC not in self.classes:
            raise KnowledgeError(f"no knowledge for class {name!r} and no class-agnostic {AGNOSTIC!r} entry")
        return AGNOSTIC, self.classes[AGNOSTIC]

    def find(self, name: str, strict: bool = False) -> tuple[str, ClassKnowledge]:
        """`lookup` for a name a user typed: a name that finds no entry (a misspelt `hazlenut`) is said once per
        process, with the closest known names, before the generic text is used; `strict` makes it an error."""
        key, entry = self.lookup(name)
        if key != AGNOSTIC or name.strip().lower() == AGNOSTIC:
            return key, entry
        known = sorted({*self.classes, *(n for e in self.classes.values() for n in e.names)}, key=str.lower)
        close = difflib.get_close_matches(name.lower(), [k.lower() for k in known], n=3, cutoff=0.6)
        hint = f" (closest known: {', '.join(close)})" if close else ""
        if strict:
            raise KnowledgeError(f"no knowledge of class {name!r}{hint}: fix the name, or drop --strict-class")
        if name not in _WARNED:
            _WARNED.add(name)
            warnings.warn(
                f"no knowledge of class {name!r}{hint}: the generic {AGNOSTIC!r} knowledge is used, with the name as "
                "given in the prompts",
                stacklevel=2,
            )
        return key, entry

    def save(self, path: str | Path, failures: list[dict[str, str]] | None = None) -> None:
        classes = {k: asdict(v) for k, v in self.classes.items()}
        document = {"header": self.header, "classes": classes, "failures": failures or []}
        atomic_write_json(Path(path), document)


@dataclass(frozen=True)
class ImageKnowledge:
    """One auxiliary image's VQA sentence; `sha256` (of the file's bytes) checks that it describes this file."""

    label: int
    text: str
    sha256: str | None = None


def image_key(root: Path, image: Path) -> str:
    """How image knowledge names an image: its path below the dataset root, '/'-separated, so that a file written
    on one machine matches the same dataset anywhere."""
    try:
        return Path(image).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(image).as_posix()


def load_image_knowledge(path: str | Path) -> dict[str, ImageKnowledge]:
    """{path below the dataset root: knowledge} from a file written by `kanoclip knowledge images`. Files of older
    versions keyed by absolute path are re-keyed below the header's dataset root."""
    try:
        document = _parse(Path(path).expanduser().read_text(), str(path))
    except OSError as e:
        raise KnowledgeError(f"cannot read image-knowledge file {path}: {e.strerror}") from e
    images = document.get("images")
    if not isinstance(images, dict):
        raise KnowledgeError(f"{path}: expected an 'images' mapping (written by `kanoclip knowledge images`)")
    root = Path(document.get("header", {}).get("dataset", "/"))
    return {
        image_key(root, Path(p)) if Path(p).is_absolute() else p: ImageKnowledge(
            int(v["label"]), str(v["text"]), v.get("sha256")
        )
        for p, v in images.items()
    }


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise KnowledgeError(f"{where} is not valid JSON ({e})") from e
    if not isinstance(document, dict):
        raise KnowledgeError(f"{where}: expected a JSON object")
    return document
