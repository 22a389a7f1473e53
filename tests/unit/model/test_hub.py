"""Hub names (`hf://ORG/NAME[@REV]`) and what kanoclip will not do to a Hub model in the cache (no network here)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from kanoclip.errors import CheckpointError, ConfigError
from kanoclip.inference.config import RunConfig
from kanoclip.model import checkpoint, hub
from tests.conftest import tiny_model

COMMIT = "0123456789abcdef" * 2 + "01234567"  # a 40-hex commit


@pytest.mark.parametrize(
    ("text", "repo_id", "revision"),
    [
        ("hf://someone/name", "someone/name", None),
        ("hf://someone/name@v2", "someone/name", "v2"),
        ("hf://Org-1/model_name.v3@refs/pr/1", "Org-1/model_name.v3", "refs/pr/1"),
        (f"hf://someone/name@{COMMIT}", "someone/name", COMMIT),
    ],
)
def test_a_hub_name_gives_its_repository_and_revision(text: str, repo_id: str, revision: str | None) -> None:
    name = hub.parse(text)
    assert (name.repo_id, name.revision) == (repo_id, revision)
    assert str(name) == text  # the name round-trips: run.json and messages say it as the user wrote it


@pytest.mark.parametrize(
    "text",
    [
        "hf://",
        "hf://someone",
        "hf://someone/",
        "hf:///name",
        "hf://a/b/c",
        "hf://some one/name",
        "hf://someone/na--me..",
        "hf://someone/x@",
        "hf://someone/x@bad rev",
        "hf://someone/x@a..b",
        "hf://someone/x@-x",
        "hf://someone/x@v2/",
        "hf://someone/x@v2.",
        "hf://someone/x@a@{1}",
    ],
)
def test_a_malformed_hub_name_is_a_config_error_that_shows_the_form(text: str) -> None:
    with pytest.raises(ConfigError, match=r"hf://ORG/NAME"):
        hub.parse(text)
    with pytest.raises(ConfigError, match=r"hf://ORG/NAME"):
        RunConfig(checkpoint=text)  # refused when the run is configured, before anything is loaded


def test_a_local_checkpoint_is_located_as_itself(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint.save(tiny_model(), tmp_path / "ckpt")
    located = checkpoint.locate(str(tmp_path / "ckpt" / checkpoint.WEIGHTS))  # a file inside names its folder
    assert located.folder == tmp_path / "ckpt" and located.hub is None
    assert not hub.is_hub_name(str(tmp_path / "ckpt"))


def test_a_hub_model_in_the_cache_is_never_edited(tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--someone--name" / "snapshots" / ("a" * 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint.save(tiny_model(), snapshot)
    before = (snapshot / checkpoint.CONFIG).read_bytes()
    assert hub.in_cache(snapshot)
    with pytest.raises(CheckpointError, match=r"never edits.*--out calibration\.json"):
        checkpoint.update_document(snapshot, "calibration", {"image_threshold": 0.5})
    assert (snapshot / checkpoint.CONFIG).read_bytes() == before
    elsewhere = tmp_path / "copy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint.save(tiny_model(), elsewhere)
    checkpoint.update_document(elsewhere, "calibration", {"image_threshold": 0.5})  # an ordinary folder is edited
    assert json.loads((elsewhere / checkpoint.CONFIG).read_text())["calibration"] == {"image_threshold": 0.5}


def test_verify_refuses_weights_that_are_not_the_ones_recorded(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint.save(tiny_model(), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / checkpoint.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        checkpoint.verify(tmp_path / "ckpt")
