"""Sharing on the Hugging Face Hub (#33): `push` (to a folder, and to a Hub server on 127.0.0.1 that answers as the
Hub's API does), `pull`, and `--checkpoint hf://ORG/NAME[@REV]` offline from the filled cache with exactly the local
checkpoint's scores. The Hub commands run as a user runs them: their own process, with the HF_* variables set."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from kanoclip.cli import main, parse
from kanoclip.cli.share import PULL, PUSH
from kanoclip.evaluation.sharing import PICKLES, SHARED
from kanoclip.model import checkpoint
from tests.conftest import randomize_learnable, tiny_model
from tests.support.hub import FakeHub

REPO = Path(__file__).resolve().parents[2]
IMAGES = str(REPO / "examples/parts")
LOCAL = ["--workers", "0", "--device", "cpu"]
TRAIN = ["--preset", "kanoclip-tiny", "--general-knowledge-only", "--max-steps", "2", *LOCAL]


def kanoclip(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kanoclip", *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def hub_env(home: Path, endpoint: str, offline: bool = False) -> dict[str, str]:
    """A user's environment for the Hub: a cache of its own, this endpoint, a token; never the real Hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(home), "HF_ENDPOINT": endpoint, "HF_TOKEN": "hf_test_token", "HF_HUB_DISABLE_XET": "1"}
    env |= {"HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(REPO / "src")}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


@dataclass
class Published:
    """Checkpoint A trained by `kanoclip train` and pushed to main, B (other weights) pushed to the branch v2, both
    pulled into the cache in `home`. The server keeps running: an offline run must not ask it anything."""

    trained: Path  # A: a real `kanoclip train` run's final checkpoint
    other: Path  # B
    hub: FakeHub
    home: Path
    endpoint: str
    pulled: dict[str, tuple[Path, str]]  # hf name -> (folder, commit) as `kanoclip pull` printed them
    outputs: list[subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def published(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    work = tmp_path_factory.mktemp("hub")
    assert main(["train", str(shared_data / "MVTec_AD"), "--out", str(work / "run"), *TRAIN]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = tiny_model()
        randomize_learnable(other, seed=2)
        checkpoint.save(other, work / "other")
    hub, home, outputs = FakeHub(), work / "hf-home", []
    pulled = {}
    with hub.running():
        env = hub_env(home, hub.url)
        for argv in (
            ["push", str(work / "run" / "final"), "someone/tiny"],
            ["push", str(work / "other"), "someone/tiny", "--revision", "v2"],
        ):
            outputs.append(kanoclip(argv, env, work))
            assert outputs[-1].returncode == 0, outputs[-1].stderr
        for name in ("hf://someone/tiny", "hf://someone/tiny@v2"):
            outputs.append(kanoclip(["pull", name], env, work))
            assert outputs[-1].returncode == 0, outputs[-1].stderr
            said = dict(re.findall(r"^(folder|commit): (\S+)$", outputs[-1].stdout, re.MULTILINE))
            pulled[name] = (Path(said["folder"]), said["commit"])
        yield Published(work / "run" / "final", work / "other", hub, home, hub.url, pulled, outputs)


# -- push ------------------------------------------------------------------------------------------------------------
def test_push_local_dir_writes_the_card_weights_and_config_and_no_pickle(published: Published, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    assert main(["push", str(published.trained), "someone/tiny", "--local-dir", str(out)]) == 0
    assert sorted(p.name for p in out.rglob("*")) == sorted(SHARED)
    assert not [p for p in out.rglob("*") if p.suffix in PICKLES]
    for name in checkpoint.FILES:  # the weights and the whole config, byte for byte
        assert (out / name).read_bytes() == (published.trained / name).read_bytes()
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "kanoclip" and card.data.license == "apache-2.0"
    assert set(card.data.tags) == {"anomaly-detection", "zero-shot-anomaly-detection"}
    assert card.data.datasets == ["MVTec_AD"]  # the folder `kanoclip train` ran on, from the checkpoint
    assert "--checkpoint hf://someone/tiny" in card.text
    assert "No evaluation was published" in card.text  # no number without an evaluation of these weights
    assert checkpoint.verify(out)["weights_sha256"] == checkpoint.weights_sha256(out)  # the folder is a checkpoint


def test_push_local_dir_refuses_a_folder_holding_other_files(
    published: Published, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shared"
    out.mkdir()
    (out / "pytorch_model.bin").write_bytes(b"stale")
    assert main(["push", str(published.trained), "someone/tiny", "--local-dir", str(out)]) == 2
    assert "holds other files (pytorch_model.bin)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["pytorch_model.bin"]  # nothing written beside it


def test_push_sends_one_commit_of_the_three_files_to_the_hub_and_no_pickle(
    published: Published, tmp_path: Path
) -> None:
    assert main(["push", str(published.trained), "someone/tiny", "--local-dir", str(tmp_path / "a")]) == 0
    assert main(["push", str(published.other), "someone/tiny", "--local-dir", str(tmp_path / "b")]) == 0
    hub = published.hub
    assert [(c.repo_id, c.revision) for c in hub.commits] == [("someone/tiny", "main"), ("someone/tiny", "v2")]
    for commit, local in zip(hub.commits, (tmp_path / "a", tmp_path / "b"), strict=True):
        assert set(commit.files) == set(SHARED)
        assert {name: commit.files[name] for name in SHARED} == {name: (local / name).read_bytes() for name in SHARED}
        assert commit.kinds["model.safetensors"] == "lfsFile"  # through the LFS API, as the Hub stores weights
        assert commit.authorization == "Bearer hf_test_token"
    every_path = {path for repo in hub.repos.values() for tree in repo.commits.values() for path in tree}
    assert every_path == {".gitattributes", *SHARED}
    assert not [p for p in every_path if p.endswith(PICKLES)]
    assert hub.validated and hub.validated[0] == (tmp_path / "a" / "README.md").read_text()  # the card, checked first
    assert ("POST", "/api/repos/create") in hub.requests and ("POST", "/api/models/someone/tiny/branch/v2") in (
        hub.requests
    )


def test_the_cards_metrics_are_an_evaluate_run_of_these_very_weights(
    published: Published, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evaluation = tmp_path / "eval"
    dataset = str(shared_data / "MVTec_AD")
    assert main(["evaluate", dataset, "--checkpoint", str(published.trained), "--out", str(evaluation), *LOCAL]) == 0
    results = str(evaluation / "results.json")
    out = tmp_path / "card"
    assert main(["push", str(published.trained), "someone/tiny", "--local-dir", str(out), "--results", results]) == 0
    card = (out / "README.md").read_text()
    # evaluate's own table (results.md, another writer) has each dataset's mean row: the card shows the same numbers
    (dataset,) = json.loads((evaluation / "results.json").read_text())["means"]
    reference = _row(evaluation / "results.md", "| dataset |", f"| {dataset} | **mean** |", skip=3)
    shown = _row(out / "README.md", "| dataset | classes |", f"| {dataset} |", skip=2)
    assert shown == {label: value for label, value in reference.items() if value != "—"} and shown
    assert "Random CLIP weights" in card  # the tiny backbone: the numbers measure the pipeline, said beside them
    capsys.readouterr()
    # another checkpoint's results are refused: a card never shows numbers measured on other weights
    refused = ["push", str(published.other), "someone/tiny", "--local-dir", str(tmp_path / "x"), "--results", results]
    assert main(refused) == 2
    assert "measured other weights" in capsys.readouterr().err


def _row(table: Path, head: str, start: str, skip: int) -> dict[str, str]:
    """A markdown table's row as {column: cell}, without the first `skip` columns and bold marks."""
    lines = table.read_text().splitlines()
    header, row = next(x for x in lines if x.startswith(head)), next(x for x in lines if x.startswith(start))
    cells = [[c.strip().strip("*") for c in line.strip().strip("|").split("|")][skip:] for line in (header, row)]
    return dict(zip(*cells, strict=True))


def test_the_cards_reproduce_command_trains_the_same_weights(
    published: Published, shared_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "card"
    assert main(["push", str(published.trained), "someone/tiny", "--local-dir", str(out)]) == 0
    card = (out / "README.md").read_text()
    config = re.search(r"```yaml\n(.*?)```", card, re.DOTALL)
    command = re.search(r"```bash\n(kanoclip train .*?)\n```", card)
    assert config and command
    (tmp_path / "train.yaml").write_text(config.group(1))
    argv = shlex.split(command.group(1))[1:]
    argv = [str(shared_data / "MVTec_AD") if a == "DATASET" else a for a in argv]
    argv[argv.index("--out") + 1] = str(tmp_path / "again")
    argv[argv.index("--config") + 1] = str(tmp_path / "train.yaml")
    assert yaml.safe_load(config.group(1))["model"]["kd_use_vqa"] is False  # --general-knowledge-only, recorded
    assert main(argv) == 0
    again = tmp_path / "again" / "final" / checkpoint.WEIGHTS
    assert again.read_bytes() == (published.trained / checkpoint.WEIGHTS).read_bytes()


def test_the_push_and_pull_help_examples_parse() -> None:
    lines = [line.strip() for line in (PUSH.epilog + PULL.epilog).splitlines() if line.strip().startswith("kanoclip ")]
    assert len(lines) == 5
    for line in lines:
        parse(shlex.split(line.split("  ")[0])[1:])


# -- pull and hf:// --------------------------------------------------------------------------------------------------
def test_pull_prints_the_cached_folder_and_the_commit_each_revision_resolved_to(published: Published) -> None:
    branches = published.hub.repos["someone/tiny"].branches
    for name, branch, local in (("hf://someone/tiny", "main", published.trained), ("hf://someone/tiny@v2", "v2", None)):
        folder, commit = published.pulled[name]
        assert commit == branches[branch]
        assert folder == published.home / "hub" / "models--someone--tiny" / "snapshots" / commit
        source = local or published.other
        for file in checkpoint.FILES:
            assert (folder / file).read_bytes() == (source / file).read_bytes()


def test_hf_checkpoint_runs_offline_from_the_cache_with_the_local_checkpoints_scores(
    published: Published, tmp_path: Path
) -> None:
    offline = hub_env(published.home, published.endpoint, offline=True)
    asked = len(published.hub.requests)
    for name, local in (("hf://someone/tiny", published.trained), ("hf://someone/tiny@v2", published.other)):
        tag = name.rsplit("/", 1)[1]
        hub_out, local_out = tmp_path / tag, tmp_path / f"{tag}-local"
        ran = kanoclip(["detect", IMAGES, "--checkpoint", name, "--out", str(hub_out), *LOCAL], offline, tmp_path)
        assert ran.returncode == 0, ran.stderr
        assert main(["detect", IMAGES, "--checkpoint", str(local), "--out", str(local_out), *LOCAL]) == 0
        assert (hub_out / "scores.csv").read_text() == (local_out / "scores.csv").read_text()
        run = json.loads((tmp_path / tag / "run.json").read_text())
        folder, commit = published.pulled[name]
        assert run["checkpoint"] == name
        assert run["hub"] == {
            "repo_id": "someone/tiny",
            "revision": "v2" if "@" in name else "main",
            "commit": commit,
            "folder": str(folder),
        }
    assert len(published.hub.requests) == asked  # offline: the Hub (still up) was not asked anything
    # the revision decides the weights: main's scores are not v2's
    assert (tmp_path / "tiny" / "scores.csv").read_text() != (tmp_path / "tiny@v2" / "scores.csv").read_text()


def test_a_repo_missing_from_the_cache_offline_is_a_clear_error(published: Published, tmp_path: Path) -> None:
    offline = hub_env(published.home, published.endpoint, offline=True)
    argv = ["detect", IMAGES, "--checkpoint", "hf://someone/absent", "--out", str(tmp_path / "o"), *LOCAL]
    asked = len(published.hub.requests)
    ran = kanoclip(argv, offline, tmp_path)
    assert ran.returncode == 2 and len(published.hub.requests) == asked
    error = ran.stderr.strip().splitlines()[-1]
    assert error.startswith("kanoclip: error: hf://someone/absent is not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE=1" in error and "run `kanoclip pull hf://someone/absent` while online" in error
    assert "Traceback" not in ran.stderr


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("hf://", "names no model"),
        ("hf://someone", "names no model"),
        ("hf://someone/", "names no model"),
        ("hf://a/b/c", "names no model"),
        ("hf://someone/x@", "is not a revision"),
        ("hf://someone/x@bad rev", "is not a revision"),
        ("hf://someone/x@a..b", "is not a revision"),
    ],
)
def test_a_malformed_hub_name_is_refused_before_anything_loads(
    name: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["detect", IMAGES, "--checkpoint", name, "--out", str(tmp_path / "o"), *LOCAL]) == 2
    error = capsys.readouterr().err
    assert said in error and "hf://ORG/NAME" in error
    assert not (tmp_path / "o").exists()
