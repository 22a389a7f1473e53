"""The package's shape (issue #29): a few top-level modules, layers as sub-packages, no giant function or class."""

from __future__ import annotations

import ast
from pathlib import Path

import kanoclip

SRC = Path(kanoclip.__file__).parent


def test_at_most_ten_modules_at_the_top_and_the_layers_as_sub_packages() -> None:
    top = [p for p in SRC.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(top) <= 10, sorted(p.name for p in top)
    packages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert {"model", "knowledge", "data", "inference", "training", "evaluation", "station", "cli"} <= packages


def test_no_function_over_100_lines_and_no_class_over_400() -> None:
    too_long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            limit = 400 if isinstance(node, ast.ClassDef) else 100
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    too_long.append(f"{path.relative_to(SRC)}:{node.name} ({length} lines)")
    assert not too_long
