"""AnomalyCLIP's learned prompts as a kanoclip checkpoint (issue #33; SPEC §3.2.2, I5).

AnomalyCLIP (ICLR 2024, github.com/zqhang/AnomalyCLIP) trains only a prompt learner on a frozen OpenAI CLIP
ViT-L/14@336px and saves `{"prompt_learner": state_dict}` (its `train.py`). kanoclip's text side assembles prompts the
same way (`prompts.PromptLearner`), so the learned vectors map one to one:

    ctx_pos (1, 1, 12, W)                  -> prompts.ctx_normal (12, W)       `[V1..V12] object.`
    ctx_neg (1, 1, 12, W)                  -> prompts.ctx_abnormal (12, W)     `[W1..W12] damaged object.`
    compound_prompts_text.{0..7} (4, W)    -> prompts.deep_prompts (8, 4, W)   token positions 1..4, text layers 2..9
    compound_prompt_projections.*          -> dropped: AnomalyCLIP creates them but never uses them
    token_prefix_*, token_suffix_*         -> checked against the backbone's own token embeddings, not stored
    tokenized_prompts_*                    -> checked against kanoclip's tokens of the two templates, not stored

AnomalyCLIP casts each deep prompt to fp16 where it overwrites the tokens (`.half()` in its text block), so the
vectors it runs with are the fp16 roundings of the stored ones: the conversion stores those roundings, and the fp32
text features equal AnomalyCLIP's. Bi-CMCI and the Conv-Adapter, which AnomalyCLIP lacks, get zero output layers: both
are then the identity (SPEC §3.3, §3.4), and the image side runs AnomalyCLIP's test settings (`SETTINGS`).

Files are read with `torch.load(weights_only=True)`: a file holding pickled Python objects is refused, never run.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kanoclip.errors import BackboneError, CheckpointError
from kanoclip.model import checkpoint
from kanoclip.model.backbone import load_backbone
from kanoclip.model.config import KAnoCLIPConfig
from kanoclip.model.kanoclip import KAnoCLIP

# AnomalyCLIP's test settings (test.py, test.sh): n_ctx 12, depth 9 and t_n_ctx 4 are read from the file itself.
# The vision side: 518 px with the positional embedding resized bilinearly; DPAM_layer=20, i.e. the V-V path on
# layers 6-24 of ViT-L's 24 (the quarter point kanoclip resolves vv_start_layer to); patch features of the last
# layer only (`--features_list 24`; before 2025-04 the four taps 6, 12, 18, 24 were all that layer's output, SPEC
# §3.1); the image score from the CLS token projected without ln_post; maps summed over levels, sigma 4.
SETTINGS: dict[str, Any] = {
    "image_size": 518,
    "pos_embed_interpolation": "bilinear",
    "vv_start_layer": None,
    "tap_mode": "distinct",
    "global_ln_post": False,
    "class_word": "object",
    "abnormal_word": "damaged",
    "temperature": 0.07,
    "map_sigma": 4.0,
    "level_fusion": "sum",
    "score_mode": "global",
}
BACKBONE = "OpenAI CLIP ViT-L/14@336px (open_clip ViT-L-14-336, pretrained 'openai')"
PARAMETERS = ("ctx_pos", "ctx_neg")
DEEP = re.compile(r"compound_prompts_text\.(\d+)")
UNUSED = re.compile(r"compound_prompt_projections\.\d+\.(weight|bias)")
BUFFERS = tuple(
    f"{kind}_{side}" for kind in ("token_prefix", "token_suffix", "tokenized_prompts") for side in ("pos", "neg")
)
EMBEDDING_TOLERANCE = 1e-3  # fp16 rounding of CLIP's token embeddings is ~1e-5; another CLIP differs by ~1e-2


@dataclass
class AnomalyCLIPPrompts:
    """The tensors of an AnomalyCLIP prompt learner, in kanoclip's shapes."""

    ctx_normal: torch.Tensor  # (n_ctx, W)
    ctx_abnormal: torch.Tensor  # (n_ctx, W)
    deep_prompts: torch.Tensor  # (depth - 1, t_n_ctx, W), as stored (fp32); AnomalyCLIP runs their fp16 roundings
    buffers: dict[str, torch.Tensor]  # the token buffers the file holds, for the checks
    sha256: str

    @property
    def width(self) -> int:
        return int(self.ctx_normal.shape[1])

    @property
    def n_ctx(self) -> int:
        return int(self.ctx_normal.shape[0])

    @property
    def depth(self) -> int:
        return int(self.deep_prompts.shape[0]) + 1

    @property
    def t_n_ctx(self) -> int:
        return int(self.deep_prompts.shape[1])


def read_prompts(path: str | Path) -> AnomalyCLIPPrompts:
    """An AnomalyCLIP `epoch_N.pth` (or its bare prompt-learner state dict), checked for keys and shapes."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist (expected an AnomalyCLIP prompt learner, e.g. epoch_15.pth)")
    data = path.read_bytes()
    state = _load_tensors(path)
    if isinstance(state, dict) and "prompt_learner" in state:
        state = state["prompt_learner"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path} is not an AnomalyCLIP prompt learner: expected {{'prompt_learner': state_dict}} of tensors, as "
            "AnomalyCLIP's train.py saves it"
        )
    missing = [k for k in PARAMETERS if k not in state]
    deep = sorted((int(m.group(1)), k) for k in state if (m := DEEP.fullmatch(k)))
    unknown = sorted(
        k for k in state if k not in (*PARAMETERS, *BUFFERS) and not DEEP.fullmatch(k) and not UNUSED.fullmatch(k)
    )
    if missing or not deep or unknown:
        raise CheckpointError(
            f"{path} is not an AnomalyCLIP prompt learner: missing {missing or 'nothing'}"
            f"{', no compound_prompts_text.N' if not deep else ''}, unexpected keys {unknown[:5] or 'none'}"
        )
    if [i for i, _ in deep] != list(range(len(deep))):
        raise CheckpointError(
            f"{path}: compound_prompts_text.N must run 0..{len(deep) - 1}, got {[i for i, _ in deep]}"
        )
    ctx = {k: state[k].float() for k in PARAMETERS}
    for key, value in ctx.items():
        if value.dim() != 4 or value.shape[:2] != (1, 1):
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)}, expected (1, 1, n_ctx, width): one class-agnostic "
                "context ('object') and one state template, as AnomalyCLIP trains them"
            )
    if ctx["ctx_pos"].shape != ctx["ctx_neg"].shape:
        raise CheckpointError(f"{path}: ctx_pos {tuple(ctx['ctx_pos'].shape)} and ctx_neg differ in shape")
    width = ctx["ctx_pos"].shape[-1]
    shapes = {tuple(state[k].shape) for _, k in deep}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[1] != width:
        raise CheckpointError(f"{path}: compound_prompts_text.N must all be (t_n_ctx, {width}), got {sorted(shapes)}")
    return AnomalyCLIPPrompts(
        ctx["ctx_pos"][0, 0],
        ctx["ctx_neg"][0, 0],
        torch.stack([state[k].float() for _, k in deep]),
        {k: state[k] for k in BUFFERS if k in state},
        hashlib.sha256(data).hexdigest(),
    )


def _load_tensors(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = found.group(1) if found else "a Python object"
        raise CheckpointError(
            f"{path} holds a pickled Python object ({what}), not only tensors: kanoclip reads AnomalyCLIP files with "
            "torch.load(weights_only=True) and never unpickles code. Save the prompt learner's tensors instead, as "
            "AnomalyCLIP's train.py does: torch.save({'prompt_learner': prompt_learner.state_dict()}, FILE)"
        ) from e
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a PyTorch weights file (torch says: {first})") from e


def anomalyclip_config(base: KAnoCLIPConfig, prompts: AnomalyCLIPPrompts, vision_layers: int) -> KAnoCLIPConfig:
    """`base` (its backbone and weights) with AnomalyCLIP's settings and the file's prompt sizes."""
    return base.replace(
        **SETTINGS,
        n_ctx=prompts.n_ctx,
        prompt_depth=prompts.depth,
        deep_prompt_length=prompts.t_n_ctx,
        tap_layers=(vision_layers,),
        training_free_taps=None,
    )


def convert(
    path: str | Path,
    out: str | Path,
    base: KAnoCLIPConfig | None = None,
    trained_on: str | None = None,
    source: str | None = None,
) -> Path:
    """Write AnomalyCLIP's prompts at `path` as a kanoclip checkpoint folder `out`; returns it.

    Args:
        base: the backbone to run on (default: OpenAI's ViT-L/14@336px, which the prompts were learned on); every
            field AnomalyCLIP defines is set to its value.
        trained_on: the auxiliary dataset the prompts were trained on, recorded for `kanoclip reproduce`.
        source: where the file came from (a URL), recorded beside its sha256.
    """
    prompts = read_prompts(path)  # before any CLIP is loaded: a bad file fails in a second
    config = (base or KAnoCLIPConfig()).replace(image_size=SETTINGS["image_size"])
    try:
        backbone = load_backbone(config)
    except BackboneError as e:
        raise BackboneError(f"AnomalyCLIP's prompts run on {BACKBONE}: {e}") from e
    config = anomalyclip_config(config, prompts, len(backbone.visual.transformer.resblocks))
    with torch.random.fork_rng():
        torch.manual_seed(0)  # Bi-CMCI's and the adapter's inner layers: the same bytes at every conversion
        model = KAnoCLIP(config, backbone)
    _check_fit(model, prompts, Path(path))
    model.load_learnable_state_dict(_learnable_state(model, prompts))
    record = {
        "format": "anomalyclip",
        "file": source or str(Path(path).expanduser().resolve()),
        "sha256": prompts.sha256,
        "trained_on": trained_on,
        "prompts": {"n_ctx": prompts.n_ctx, "depth": prompts.depth, "t_n_ctx": prompts.t_n_ctx},
        "identity": "bi_cmci and adapter output layers are zero: both pass features through unchanged",
    }
    return checkpoint.save(model, out, {"converted_from": record})


def _check_fit(model: KAnoCLIP, prompts: AnomalyCLIPPrompts, path: Path) -> None:
    """The file's prompts belong to this text encoder: same width, same templates, same token embeddings."""
    learner = model.prompts
    if prompts.width != learner.tower.width:
        raise CheckpointError(
            f"{path} holds prompts of width {prompts.width}, but {model.backbone_source}'s text encoder is "
            f"{learner.tower.width} wide: AnomalyCLIP's published prompts need {BACKBONE}"
        )
    tokens = learner.tokens.cpu()
    for i, side in enumerate(("pos", "neg")):
        stored = prompts.buffers.get(f"tokenized_prompts_{side}")
        if stored is not None and not torch.equal(stored.reshape(-1).long(), tokens[i]):
            raise CheckpointError(
                f"{path}: its tokenized_prompts_{side} are not the template kanoclip builds ('X' x {prompts.n_ctx} "
                f"then '{'object' if side == 'pos' else 'damaged object'}.'): prompts trained on other templates "
                "cannot be converted exactly"
            )
    embeddings = learner.token_embeddings.cpu()
    n = prompts.n_ctx
    for i, side in enumerate(("pos", "neg")):
        for part, ours in (("prefix", embeddings[i, :1]), ("suffix", embeddings[i, 1 + n :])):
            stored = prompts.buffers.get(f"token_{part}_{side}")
            if stored is None:
                continue
            stored = stored.float().reshape(-1, stored.shape[-1])
            if stored.shape != ours.shape or (stored - ours).abs().max() > EMBEDDING_TOLERANCE:
                raise CheckpointError(
                    f"{path} was trained on another CLIP: its token_{part}_{side} differs from the token embeddings "
                    f"of {model.backbone_source}. AnomalyCLIP's published prompts need {BACKBONE} "
                    "(--backbone ViT-L-14-336 --pretrained openai, or --pretrained FILE with those weights)"
                )


def _learnable_state(model: KAnoCLIP, prompts: AnomalyCLIPPrompts) -> dict[str, torch.Tensor]:
    """The model's learnable weights with AnomalyCLIP's prompts in, and Bi-CMCI and the adapter as the identity."""
    state = {k: v.detach().clone() for k, v in model.learnable_state_dict().items()}
    state["prompts.ctx_normal"] = prompts.ctx_normal.clone()
    state["prompts.ctx_abnormal"] = prompts.ctx_abnormal.clone()
    state["prompts.deep_prompts"] = prompts.deep_prompts.half().float()  # as AnomalyCLIP runs them
    for block in ("text_from_image", "image_from_text"):
        for name in ("out_weight", "out_bias"):
            state[f"bi_cmci.{block}.{name}"].zero_()  # residual + 0: P' = P, T' = T (re-normalised unit vectors)
    last = len(model.adapter.body) - 1  # type: ignore[arg-type]
    for name in ("weight", "bias"):
        state[f"adapter.body.{last}.{name}"].zero_()  # g' = normalize(g + ratio * 0)
    return state
