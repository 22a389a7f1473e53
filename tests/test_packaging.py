"""What a user meets before any image: the command starts fast, says its version, and the test data is found."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import kanoclip
from kanoclip.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def test_the_cli_and_its_help_import_no_torch() -> None:
    """`kanoclip --help` took 5.3 s when torch and open_clip were imported eagerly."""
    code = (
        "import sys, contextlib, io\n"
        "import kanoclip.cli\n"
        "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'imported by import kanoclip.cli'\n"
        "for argv in (['--help'], ['detect', '--help'], ['calibrate', '--help'], ['--version']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        kanoclip.cli.main(argv)\n"
        "assert 'torch' not in sys.modules, 'imported by --help'\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr


def test_the_version_comes_from_the_package_metadata(capsys: object) -> None:
    assert kanoclip.__version__ == metadata.version("kanoclip")
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert kanoclip.__version__ in capsys.readouterr().out  # type: ignore[attr-defined]


def test_the_package_is_typed_and_licensed() -> None:
    assert (Path(kanoclip.__file__).parent / "py.typed").is_file()
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert metadata.metadata("kanoclip")["License-Expression"] == "Apache-2.0"


@pytest.mark.slow
def test_the_public_api_loads_lazily_and_completely() -> None:
    for name in kanoclip.__all__:
        assert getattr(kanoclip, name) is not None
    result = run_python("import kanoclip, sys; kanoclip.Detector; assert 'torch' in sys.modules")
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_missing_test_data_is_one_message_with_the_sources(tmp_path: Path) -> None:
    target = ROOT / "tests" / "test_evaluation.py::test_masks_are_resized_as_the_reference_pipeline_does_on_real_masks"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{target}[112]"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "KANOCLIP_TEST_DATA": str(tmp_path / "nowhere")},
    )
    assert result.returncode == 1
    assert "KANOCLIP_TEST_DATA" in result.stdout and "KolektorSDD v1" in result.stdout
    assert "Traceback" not in result.stdout


def test_commands_that_reproduce_published_tables_default_to_fp32() -> None:
    parser = build_parser()
    for argv in (["evaluate", "d"], ["train", "d"], ["reproduce", "--data-root", "d"]):
        assert parser.parse_args(argv).precision == "fp32", argv
    for argv in (["detect", "x"], ["serve"], ["calibrate", "x"]):
        assert parser.parse_args(argv).precision == "auto", argv
