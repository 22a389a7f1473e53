"""Training: the loss falls, checkpoints round-trip, kill-and-resume is bitwise, DDP under torchrun, reproduce."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from kanoclip import TrainConfig
from kanoclip.data.datasets import load_dataset
from kanoclip.model import checkpoint
from kanoclip.training.loop import train
from tests.conftest import TINY
from tests.support.training import TINY_FLAGS, losses
from tests.support.training import synthetic as synthetic


def test_reproduce_trains_on_mvtec_and_evaluates_the_other_datasets(shared_data: Path, tmp_path: Path) -> None:
    from kanoclip.cli import main

    root = tmp_path / "data"
    root.mkdir()
    (root / "MVTec_AD").symlink_to(shared_data / "MVTec_AD")
    (root / "Kvasir-SEG").symlink_to(shared_data / "Kvasir-SEG")
    (root / "VisA").symlink_to(shared_data / "MVTec_derived_hazelnut_toy")  # found by name, read by its layout
    out = tmp_path / "out"
    flags = [*TINY_FLAGS, "--workers", "0", "--device", "cpu"]
    code = main(
        [
            "reproduce",
            "--data-root",
            str(root),
            "--out",
            str(out),
            "--general-knowledge-only",
            "--max-steps",
            "2",
            "--shots",
            "1",
            "--shot-seeds",
            "0,1",
            *flags,
        ]
    )
    assert code == 0
    table = (out / "reproduce.md").read_text()
    few = [line for line in table.splitlines() if line.startswith("| MVTec AD | VisA | 1 |")]
    assert len(few) == 1 and " ± " in few[0] and "WinCLIP+: 93.1 / 95.2" in few[0]  # beside the published k=1
    assert any(line.startswith("| VisA | MVTec AD | 1 |") for line in table.splitlines())
    assert not any(line.startswith("| Kvasir | MVTec AD | 1 |") for line in table.splitlines())  # no train split
    assert "RANDOM CLIP weights" in table
    row = next(line for line in table.splitlines() if line.startswith("| Kvasir |"))
    assert "| MVTec AD |" in row and "78.9 | 45.6" in row  # AnomalyCLIP's published Kvasir pixel AUROC, PRO
    assert (out / "train_mvtecad" / "final" / "model.safetensors").is_file()


def test_a_state_file_planted_in_a_run_folder_is_refused_and_its_code_never_runs(
    synthetic: Path, tmp_path: Path
) -> None:
    """A shared run folder once ran a planted pickle's shell command on `kanoclip train --out RUN`."""
    from kanoclip.cli import main

    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"run": Planted()}, run / "training_state.pt")
    args = ["train", str(synthetic), "--out", str(run), "--general-knowledge-only", *TINY_FLAGS, "--workers", "0"]
    assert main([*args, "--device", "cpu", "--max-steps", "1"]) == 2
    assert not marker.exists()


def test_a_few_steps_on_the_synthetic_set_lower_the_loss(synthetic: Path, tmp_path: Path) -> None:
    config = TINY.replace(kd_use_vqa=False)
    train_config = TrainConfig(epochs=5, batch_size=4, num_workers=0, lr_prompts=1e-2, lr_modules=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        final = train(config, train_config, load_dataset(synthetic), tmp_path, device="cpu")
    log = losses(tmp_path)
    assert len(log) == 15 and [r["step"] for r in log] == list(range(1, 16))
    first, last = np.mean([r["total"] for r in log[:3]]), np.mean([r["total"] for r in log[-3:]])
    assert last < 0.8 * first, (first, last)
    assert log[-1]["kd"] < log[0]["kd"]
    # round trip: the final checkpoint rebuilds the trained model; saving it again changes nothing
    model = checkpoint.load(final)
    again = checkpoint.load(checkpoint.save(model, tmp_path / "copy"))
    images = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        a, b = model.eval()(images), again.eval()(images)
    assert torch.equal(a.pred_score, b.pred_score) and torch.equal(a.anomaly_map, b.anomaly_map)
    state = torch.load(tmp_path / "training_state.pt", weights_only=False)
    saved = load_file(str(final / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in state["weights"].items())
