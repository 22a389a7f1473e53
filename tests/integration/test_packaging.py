"""What a user meets before any image: the command starts fast, says its version, and the test data is found."""

from __future__ import annotations

from importlib import metadata

import kanoclip
from kanoclip import RunConfig, TrainConfig
from kanoclip.cli import main, parse
from tests.support.packaging import run_python


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


def test_commands_that_reproduce_published_tables_default_to_fp32() -> None:
    assert parse(["evaluate", "d"]).get(RunConfig).precision == "fp32"
    for argv in (["train", "d"], ["reproduce", "--data-root", "d"]):
        assert parse(argv).get(TrainConfig).precision == "fp32", argv
    for argv in (["detect", "x"], ["serve"], ["calibrate", "x"]):
        assert parse(argv).get(RunConfig).precision == "auto", argv
