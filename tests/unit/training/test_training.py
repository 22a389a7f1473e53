"""Training: the loss falls, checkpoints round-trip, kill-and-resume is bitwise, DDP under torchrun, reproduce."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest

from kanoclip import TrainConfig
from kanoclip.data.datasets import load_dataset
from kanoclip.data.datasets.synthetic import generate
from kanoclip.errors import ConfigError, KnowledgeError
from kanoclip.evaluation.reproduce import reproduce
from kanoclip.knowledge import load_image_knowledge
from kanoclip.knowledge.base import ImageKnowledge
from kanoclip.training.loop import epoch_order, image_knowledge_rows, train
from tests.conftest import TINY, tiny_model
from tests.support.training import losses
from tests.support.training import synthetic as synthetic


def test_resuming_with_other_settings_is_refused(synthetic: Path, tmp_path: Path) -> None:
    config, data = TINY.replace(kd_use_vqa=False), load_dataset(synthetic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(config, TrainConfig(max_steps=1, batch_size=4, num_workers=0), data, tmp_path, device="cpu")
        with pytest.raises(ConfigError, match="other settings"):
            train(config, TrainConfig(max_steps=1, batch_size=2, num_workers=0), data, tmp_path, device="cpu")


def test_training_without_vqa_knowledge_names_the_general_only_option(synthetic: Path, tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match="--general-knowledge-only"):
        train(TINY, TrainConfig(max_steps=1), load_dataset(synthetic), tmp_path, device="cpu")


def test_per_image_knowledge_enters_the_kd_loss(synthetic: Path, tmp_path: Path) -> None:
    data = load_dataset(synthetic)
    vqa = {
        s.image.relative_to(data.root).as_posix(): ImageKnowledge(
            s.label, "a part with a scratch." if s.label else "a clean part."
        )
        for s in data.test
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(
            TINY,
            TrainConfig(max_steps=1, batch_size=4, num_workers=0),
            data,
            tmp_path / "vqa",
            image_knowledge=vqa,
            device="cpu",
        )
        train(
            TINY.replace(kd_use_vqa=False),
            TrainConfig(max_steps=1, batch_size=4, num_workers=0),
            data,
            tmp_path / "gen",
            device="cpu",
        )
    with_vqa, general = losses(tmp_path / "vqa")[0], losses(tmp_path / "gen")[0]
    assert with_vqa["kd"] > general["kd"]  # the same first batch and weights, plus the image CE term
    assert with_vqa["global"] == pytest.approx(general["global"], rel=1e-6)


def test_epoch_order_depends_on_seed_and_epoch_only() -> None:
    assert epoch_order(10, 111, 0) == epoch_order(10, 111, 0)
    assert sorted(epoch_order(10, 111, 3)) == list(range(10))
    assert epoch_order(10, 111, 0) != epoch_order(10, 111, 1)


def test_image_knowledge_written_on_another_machine_matches_by_relative_path_and_sha256(
    synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per-image knowledge was keyed by absolute path: a file made elsewhere matched nothing."""
    data = load_dataset(synthetic)
    elsewhere = "/mnt/other-machine/datasets/syn"
    images = {
        f"{elsewhere}/{s.image.relative_to(data.root).as_posix()}": {
            "label": s.label,
            "text": f"description {i}.",
            "sha256": hashlib.sha256(s.image.read_bytes()).hexdigest() if i else "0" * 64,  # the first: stale
        }
        for i, s in enumerate(data.test)
    }
    path = tmp_path / "vqa.json"
    path.write_text(json.dumps({"header": {"dataset": elsewhere}, "images": images, "failures": []}))
    knowledge = load_image_knowledge(path)
    assert set(knowledge) == {s.image.relative_to(data.root).as_posix() for s in data.test}
    model = tiny_model()
    embeddings, rows = image_knowledge_rows(model, data.root, data.test, knowledge)
    assert embeddings is not None and rows[0] == -1 and (rows[1:] >= 0).all()
    assert f"{len(data.test) - 1} of {len(data.test)} images matched; 1 skipped" in capsys.readouterr().out


def test_reproduce_checks_every_input_before_the_first_training(tmp_path: Path) -> None:
    root = tmp_path / "root"
    generate(root / "mvtec_anomaly_detection", size=48, train=0, good=2, per_defect=1, seed=1)
    generate(root / "visa", size=48, train=0, good=2, per_defect=1, seed=2)
    out = tmp_path / "out"
    with pytest.raises(KnowledgeError, match="VisA"):  # kd_use_vqa on, a VQA file for MVTec AD only
        reproduce(root, out, TINY, TrainConfig(max_steps=1), {"MVTec AD": str(tmp_path / "mvtec.json")}, "cpu")
    with pytest.raises(KnowledgeError, match="cannot read"):  # both named, one missing: before any training too
        vqa = {"MVTec AD": str(tmp_path / "missing.json"), "VisA": str(tmp_path / "missing.json")}
        reproduce(root, out, TINY, TrainConfig(max_steps=1), vqa, "cpu")
    assert not out.exists() or not any(out.rglob("training_state.pt"))  # nothing was trained
