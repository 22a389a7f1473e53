"""AnomalyCLIP's published prompts in kanoclip (issue #33): `kanoclip convert anomalyclip`, the `anomalyclip:NAME`
checkpoints fetched once from (here) a local server, and `reproduce` on converted checkpoints.

The AnomalyCLIP files are written here with random values, the key names, shapes and dtypes of AnomalyCLIP's
`AnomalyCLIP_PromptLearner` (prompt_ensemble.py) saved as its train.py saves them, for the tiny backbone's width. The
text features are checked against an independent re-implementation of AnomalyCLIP's prompt assembly (its
`ResidualAttentionBlock_learnable_token` and `encode_text_learn`), not against kanoclip's prompt learner.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from kanoclip.cli import main
from kanoclip.errors import CheckpointError, ConfigError
from kanoclip.model import checkpoint, published
from kanoclip.model.anomalyclip import convert
from kanoclip.model.backbone import load_backbone
from kanoclip.model.presets import preset
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[2]
TINY_FLAGS = ["--backbone", "kanoclip-tiny", "--pretrained", "none"]
N_CTX, DEPTH, T_N_CTX = 12, 9, 4  # AnomalyCLIP's published settings (test.sh: --n_ctx 12 --depth 9 --t_n_ctx 4)
RANDOM_WEIGHTS = "ignore:building .* with RANDOM weights:UserWarning"
pytestmark = pytest.mark.filterwarnings(RANDOM_WEIGHTS)


class AnomalyCLIPLayout(nn.Module):
    """The parameters and buffers AnomalyCLIP's prompt learner registers, under its names, in its shapes."""

    def __init__(self, clip: nn.Module, seed: int = 0, std: float = 0.02) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        width = clip.token_embedding.embedding_dim
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.randn(T_N_CTX, width, generator=g) * std) for _ in range(DEPTH - 1)]
        )
        self.compound_prompt_projections = nn.ModuleList([nn.Linear(width, 896) for _ in range(DEPTH - 1)])
        self.ctx_pos = nn.Parameter(torch.randn(1, 1, N_CTX, width, generator=g) * std)  # (n_cls, templates, n, W)
        self.ctx_neg = nn.Parameter(torch.randn(1, 1, N_CTX, width, generator=g) * std)
        tokens = anomalyclip_tokens()
        with torch.no_grad():
            embedding = clip.token_embedding(tokens.long())  # (2, 77, W)
        for i, side in enumerate(("pos", "neg")):
            self.register_buffer(f"token_prefix_{side}", embedding[i : i + 1, None, :1].clone())
            self.register_buffer(f"token_suffix_{side}", embedding[i : i + 1, None, 1 + N_CTX :].clone())
        for i, side in enumerate(("pos", "neg")):
            self.register_buffer(f"tokenized_prompts_{side}", tokens[i : i + 1, None].clone())  # (1, 1, 77) int32


def anomalyclip_tokens() -> torch.Tensor:
    """AnomalyCLIP's two prompts, `X`x12 + "object." and `X`x12 + "damaged object.", as its tokenize() gives them."""
    prefix = " ".join(["X"] * N_CTX)
    return open_clip.tokenize([f"{prefix} object.", f"{prefix} damaged object."]).int()


def tiny_clip(seed: int = 0) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone(TINY.replace(random_seed=seed)).clip


def write_anomalyclip(path: Path, clip: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """An AnomalyCLIP `epoch_15.pth` as its train.py writes one; returns the state dict."""
    state = AnomalyCLIPLayout(clip, seed).state_dict()
    torch.save({"prompt_learner": state}, path)
    return dict(state)


def anomalyclip_text_features(clip: nn.Module, state: dict[str, torch.Tensor], deep: bool = True) -> torch.Tensor:
    """AnomalyCLIP's [t_normal, t_anomalous] (2, D), assembled as its code does: the token embeddings of the two
    templates with the learned contexts in place of the X's; in text layers 2..depth its compound prompts replace
    positions 1..t_n_ctx, cast to fp16 first (`.half()`) and promoted back by the concatenation; EOT token, ln_final,
    text projection, L2 normalisation. Runs the open_clip text blocks one by one."""
    tokens = anomalyclip_tokens().long()
    with torch.no_grad():
        prefix = torch.cat([state["token_prefix_pos"][0], state["token_prefix_neg"][0]])  # (2, 1, W)
        suffix = torch.cat([state["token_suffix_pos"][0], state["token_suffix_neg"][0]])  # (2, 64, W)
        ctx = torch.cat([state["ctx_pos"][0], state["ctx_neg"][0]])  # (2, 12, W)
        x = torch.cat([prefix, ctx, suffix], dim=1) + clip.positional_embedding
        deeper = [state[f"compound_prompts_text.{i}"] for i in range(DEPTH - 1)] if deep else []
        counter = 0
        for layer, block in enumerate(clip.transformer.resblocks):
            if layer > 0 and counter <= len(deeper) - 1:
                context = deeper[counter].expand(x.shape[0], -1, -1).half()
                x = torch.cat([x[:, :1], context, x[:, 1 + T_N_CTX :]], dim=1)
                counter += 1
            x = block(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)[torch.arange(2), tokens.argmax(dim=-1)] @ clip.text_projection
    return x / x.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def clip() -> nn.Module:
    return tiny_clip()


@pytest.fixture
def pth(tmp_path: Path, clip: nn.Module) -> Path:
    path = tmp_path / "epoch_15.pth"
    write_anomalyclip(path, clip)
    return path


def test_convert_writes_a_checkpoint_that_detect_runs_with_anomalyclips_settings(
    pth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ac"
    assert main(["convert", "anomalyclip", str(pth), *TINY_FLAGS, "--trained-on", "VisA", "--out", str(out)]) == 0
    assert "ViT-L/14@336px" in capsys.readouterr().out  # says which CLIP the published prompts need
    document = json.loads((out / "config.json").read_text())
    model = document["model"]
    assert (model["n_ctx"], model["prompt_depth"], model["deep_prompt_length"]) == (N_CTX, DEPTH, T_N_CTX)
    assert model["image_size"] == 518 and model["global_ln_post"] is False and model["level_fusion"] == "sum"
    assert model["vv_start_layer"] == 2 and model["tap_layers"] == [8]  # tiny's 8 layers; ViT-L: 6 and [24]
    assert (model["class_word"], model["abnormal_word"]) == ("object", "damaged")
    record = document["converted_from"]
    assert record["sha256"] == hashlib.sha256(pth.read_bytes()).hexdigest() and record["trained_on"] == "VisA"

    state, learned = load_file(str(out / "model.safetensors")), torch.load(pth, weights_only=True)["prompt_learner"]
    assert torch.equal(state["prompts.ctx_normal"], learned["ctx_pos"][0, 0])
    assert torch.equal(state["prompts.ctx_abnormal"], learned["ctx_neg"][0, 0])
    deep = torch.stack([learned[f"compound_prompts_text.{i}"] for i in range(DEPTH - 1)])
    assert torch.equal(state["prompts.deep_prompts"], deep.half().float())
    for name in ("text_from_image", "image_from_text"):
        assert not state[f"bi_cmci.{name}.out_weight"].any() and not state[f"bi_cmci.{name}.out_bias"].any()
    assert not state["adapter.body.4.weight"].any() and not state["adapter.body.4.bias"].any()

    image = str(REPO / "examples/parts/defect/scratch_0.png")
    results = tmp_path / "results"
    args = ["detect", image, "--checkpoint", str(out), "--workers", "0", "--device", "cpu", "--out", str(results)]
    assert main(args) == 0, capsys.readouterr().err
    assert "scratch_0.png" in (results / "scores.csv").read_text()


def test_the_converted_text_features_equal_anomalyclips_assembly(pth: Path, tmp_path: Path, clip: nn.Module) -> None:
    convert(pth, tmp_path / "ac", TINY)
    model = checkpoint.load(tmp_path / "ac")
    state = torch.load(pth, weights_only=True)["prompt_learner"]
    expected = anomalyclip_text_features(model.clip, state)
    ours = model.encode_prompts()  # [t_normal, t_anomalous]
    assert (ours - expected).abs().max() < 1e-5
    # the check can tell: the deep prompts without AnomalyCLIP's fp16 rounding, or none at all, are off by more
    assert (anomalyclip_text_features(model.clip, state, deep=False) - ours).abs().max() > 1e-2
    with torch.no_grad():
        model.prompts.deep_prompts.copy_(torch.stack([state[f"compound_prompts_text.{i}"] for i in range(DEPTH - 1)]))
    assert (model.encode_prompts() - expected).abs().max() > 1e-5
    # Bi-CMCI and the adapter pass features through: patches and text as they came, g only normalised
    g = torch.Generator().manual_seed(0)
    patches = F.normalize(torch.randn(2, 1, 16, ours.shape[1], generator=g), dim=-1)
    fused, text = model.bi_cmci(patches, ours)
    assert torch.allclose(fused, patches, atol=1e-6) and torch.allclose(text, ours.expand_as(text), atol=1e-6)
    glob, grid = torch.randn(2, ours.shape[1], generator=g), torch.randn(2, 16, ours.shape[1], generator=g)
    assert torch.allclose(model.adapter(glob, grid, (4, 4)), F.normalize(glob, dim=-1), atol=1e-6)


def test_converting_twice_gives_the_same_bytes(pth: Path, tmp_path: Path) -> None:
    convert(pth, tmp_path / "a", TINY)
    convert(pth, tmp_path / "b", TINY)
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()


class Part:
    """Any class instance: torch.save pickles it by reference to this module."""

    def __init__(self) -> None:
        self.ctx = torch.zeros(3)


@dataclass
class Payload:
    """An object whose unpickling would run code: here it would create `marker`."""

    marker: Path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["instance", "code"])
def test_a_file_holding_a_pickled_object_is_refused_and_never_run(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "epoch_15.pth"
    torch.save({"prompt_learner": {"ctx_pos": Part() if kind == "instance" else Payload(marker)}}, path)
    with pytest.raises(CheckpointError, match=r"holds a pickled Python object \(.+\), not only tensors") as err:
        convert(path, tmp_path / "out", TINY)
    assert "weights_only=True" in str(err.value) and "never unpickles code" in str(err.value)
    if kind == "instance":
        assert "test_anomalyclip.Part" in str(err.value)
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert main(["convert", "anomalyclip", str(path), *TINY_FLAGS, "--out", str(tmp_path / "out")]) == 2
    assert "kanoclip: error: " in capsys.readouterr().err and not marker.exists()


def test_files_that_are_not_anomalyclips_prompts_are_refused_clearly(tmp_path: Path, clip: nn.Module) -> None:
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, other)
    with pytest.raises(CheckpointError, match="not an AnomalyCLIP prompt learner"):
        convert(other, tmp_path / "o", TINY)
    foreign = tmp_path / "foreign.pth"
    write_anomalyclip(foreign, tiny_clip(seed=1))  # learned on another CLIP: its token embeddings differ
    with pytest.raises(CheckpointError, match="was trained on another CLIP"):
        convert(foreign, tmp_path / "f", TINY)
    with pytest.raises(CheckpointError, match="does not exist"):
        convert(tmp_path / "missing.pth", tmp_path / "m", TINY)


def test_convert_refuses_model_changes_and_a_preset_name_points_at_checkpoint(
    pth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["convert", "anomalyclip", str(pth), *TINY_FLAGS, "--set", "tap_mode=top", "--out", str(tmp_path / "x")]
    assert main(args) == 2
    assert "--set tap_mode cannot be used here" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="use it as --checkpoint anomalyclip:trained-on-visa"):
        preset("anomalyclip:trained-on-visa")


def test_anomalyclip_settings_on_vit_l_resolve_to_its_test_script_layers() -> None:
    """DPAM_layer=20: V-V path on layers 6..24 of 24; `--features_list 24`."""
    from kanoclip.model.anomalyclip import AnomalyCLIPPrompts, anomalyclip_config

    prompts = AnomalyCLIPPrompts(torch.zeros(12, 768), torch.zeros(12, 768), torch.zeros(8, 4, 768), {}, "")
    config = anomalyclip_config(preset("kanoclip-vit-l-14-336"), prompts, 24).resolve(24, 12)
    assert (config.vv_start_layer, config.tap_layers, config.image_size) == (6, (24,), 518)
    assert (config.n_ctx, config.prompt_depth, config.deep_prompt_length) == (12, 9, 4)


# -- the published names, fetched from a local server --------------------------------------------------------------
class Server:
    """A local HTTP server holding AnomalyCLIP's repository paths; counts the files it sent."""

    def __init__(self, root: Path) -> None:
        self.sent: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

            def do_GET(self) -> None:
                server.sent.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(tmp_path: Path, clip: nn.Module, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """Both published files (random, tiny) at their repository paths; the cache in a temporary folder."""
    root = tmp_path / "repo"
    for seed, (name, entry) in enumerate(list(published.PUBLISHED.items())):
        path = root / entry.path
        path.parent.mkdir(parents=True)
        write_anomalyclip(path, clip, seed)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        monkeypatch.setitem(published.PUBLISHED, name, dataclasses.replace(entry, sha256=digest))
    served = Server(root)
    monkeypatch.setenv(published.BASE_URL_ENV, served.url)
    monkeypatch.setenv("KANOCLIP_CACHE", str(tmp_path / "cache"))
    yield served
    served.httpd.shutdown()


TINY_CHANGES = {"backbone": "kanoclip-tiny", "pretrained": "none"}


def test_a_published_name_is_fetched_once_converted_once_and_then_read_from_the_cache(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = Path(published.resolve_checkpoint("anomalyclip:trained-on-visa", TINY_CHANGES))
    assert server.sent == ["/checkpoints/9_12_4_multiscale/epoch_15.pth"]
    assert folder.is_relative_to(tmp_path / "cache")
    err = capsys.readouterr().err
    assert "fetching" in err and "ViT-L/14@336px" in err and "1.7 GB" in err
    record = checkpoint.read_document(folder)["converted_from"]
    assert record["trained_on"] == "VisA" and record["file"].startswith(server.url)
    written = (folder / "config.json").stat().st_mtime_ns

    again = published.resolve_checkpoint("anomalyclip:trained-on-visa", {**TINY_CHANGES, "image_size": 112})
    assert Path(again) == folder and len(server.sent) == 1  # no second fetch
    assert (folder / "config.json").stat().st_mtime_ns == written and capsys.readouterr().err == ""  # nor conversion
    assert checkpoint.load(again).config.n_ctx == N_CTX
    assert published.resolve_checkpoint("runs/x/final") == "runs/x/final"  # other names pass through


def test_detect_takes_a_published_name_as_its_checkpoint(server: Server, shared_data: Path, tmp_path: Path) -> None:
    """`--checkpoint anomalyclip:NAME` wherever a checkpoint is taken: detect fetches, converts and runs it, and
    scores exactly as the converted folder does."""
    image = str(shared_data / "MVTec_AD" / "bottle" / "test" / "good" / "000.png")
    flags = ["--backbone", "kanoclip-tiny", "--pretrained", "none", "--workers", "0", "--device", "cpu"]
    assert (
        main(["detect", image, "--checkpoint", "anomalyclip:trained-on-visa", *flags, "--out", str(tmp_path / "a")])
        == 0
    )
    folder = published.resolve_checkpoint("anomalyclip:trained-on-visa", TINY_CHANGES)
    assert main(["detect", image, "--checkpoint", folder, *flags, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "scores.csv").read_text() == (tmp_path / "b" / "scores.csv").read_text()
    assert server.sent == ["/checkpoints/9_12_4_multiscale/epoch_15.pth"]  # fetched once


def test_a_published_file_that_does_not_match_its_sha256_is_refused(
    server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    entry = published.PUBLISHED["trained-on-mvtec"]
    monkeypatch.setitem(published.PUBLISHED, "trained-on-mvtec", dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(CheckpointError, match="not the published 0000"):
        published.resolve_checkpoint("anomalyclip:trained-on-mvtec", TINY_CHANGES)
    assert not list((tmp_path / "cache").rglob("*.pth"))  # nothing kept
    with pytest.raises(CheckpointError, match="unknown published checkpoint"):
        published.resolve_checkpoint("anomalyclip:trained-on-dtd", TINY_CHANGES)


def test_without_a_network_the_error_says_how_to_convert_by_hand(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(published.BASE_URL_ENV, "http://127.0.0.1:9/")  # nothing listens on the discard port
    monkeypatch.setenv("KANOCLIP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match=r"cannot fetch .*kanoclip convert anomalyclip FILE --out DIR"):
        published.resolve_checkpoint("anomalyclip:trained-on-visa", TINY_CHANGES)


def test_reproduce_evaluates_checkpoints_on_the_protocols_datasets_beside_the_published_numbers(
    server: Server, pth: Path, tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "mvtec").symlink_to(shared_data / "MVTec_AD")
    (data / "headct").symlink_to(shared_data / "HeadCT")
    mvtec = tmp_path / "ac-mvtec"
    assert main(["convert", "anomalyclip", str(pth), *TINY_FLAGS, "--trained-on", "mvtec", "--out", str(mvtec)]) == 0
    out = tmp_path / "reproduce"
    args = ["reproduce", "--data-root", str(data), "--checkpoint", "anomalyclip:trained-on-visa"]
    args += ["--checkpoint", str(mvtec), *TINY_FLAGS, "--image-size", "112", "--workers", "0", "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0, capsys.readouterr().err
    table = (out / "reproduce.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    # the VisA-trained prompts on MVTec AD only; the MVTec-trained ones on everything else (here HeadCT)
    assert rows["MVTec AD"].split("|")[2].strip() == "VisA" and "| 91.5 | 96.2 | 91.1 | 81.4 |" in rows["MVTec AD"]
    assert rows["HeadCT"].split("|")[2].strip() == "MVTec AD" and "| 93.4 | 91.6 | — | — |" in rows["HeadCT"]
    for row in (rows["MVTec AD"], rows["HeadCT"]):
        ours = row.split("|")[3].strip()
        assert ours != "—" and 0 <= float(ours) <= 100  # our image AUROC, measured
    assert "anomalyclip:trained-on-visa" in table and "RANDOM CLIP weights" in table
    assert (out / "eval_mvtecad_from_visa/results.json").is_file()
    assert (out / "eval_headct_from_mvtecad/results.json").is_file()
    assert len(server.sent) == 1


def test_reproduce_with_checkpoints_refuses_training_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["reproduce", "--data-root", str(tmp_path), "--checkpoint", "runs/x", "--epochs", "3", "--knowledge", "k"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--epochs, --knowledge cannot be used with --checkpoint" in err


def test_the_protocol_plans_a_checkpoint_by_what_it_was_trained_on() -> None:
    from kanoclip.evaluation.reproduce import evaluated_by, trained_on

    found = ["MVTec AD", "VisA", "HeadCT"]
    assert evaluated_by("VisA", found) == ["MVTec AD"]
    assert evaluated_by("MVTec AD", found) == ["VisA", "HeadCT"]
    assert evaluated_by(None, found) == found
    assert trained_on({"training": {"data": "/data/mvtec_anomaly_detection"}}) == "MVTec AD"
    assert trained_on({"converted_from": {"trained_on": "visa"}, "training": {"data": "/d/mvtec"}}) == "VisA"
    assert trained_on({"training": {"data": "/data/line3"}}) is None
