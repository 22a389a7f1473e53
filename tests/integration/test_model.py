"""The assembled model: gradients, shapes, checkpoints, and each part against an independent reference."""

from __future__ import annotations

import pytest

from kanoclip.cli import main
from tests.conftest import tiny_model


def test_cli_info_prints_the_resolved_config_and_parameter_counts(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["info", "--backbone", "kanoclip-tiny", "--pretrained", "none", "--image-size", "112", "--set", "tap_mode=top"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "tap_layers: [2, 4, 6, 8]" in out and 'tap_mode: "top"' in out
    frozen = int(out.split("frozen (CLIP):")[1].split()[0].replace(",", ""))
    learnable = int(out.split("learnable:")[1].split()[0].replace(",", ""))
    model = tiny_model()
    assert learnable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert frozen == sum(p.numel() for p in model.clip.parameters())


def test_cli_reports_user_errors_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--backbone", "kanoclip-tiny", "--pretrained", "none", "--set", "colour=3"]) == 2
    assert "unknown config field" in capsys.readouterr().err
