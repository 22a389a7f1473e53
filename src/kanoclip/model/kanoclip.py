"""KAnoCLIP: wires CLIP-VV, the prompt learner, Bi-CMCI and the Conv-Adapter into scores and maps (SPEC §1, §3.5).

CLIP stays frozen: only `prompts`, `bi_cmci` and `adapter` hold learnable parameters. In training-free mode the
text features come from knowledge sentences instead of the learned prompts; Bi-CMCI and the adapter start as the
identity, so an untrained model is a plain CLIP-VV zero-shot detector.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import EllipsisType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kanoclip.model.adapter import build_adapter
from kanoclip.model.backbone import Backbone, load_backbone
from kanoclip.model.clip_vv import VisualFeatures, encode_image
from kanoclip.model.config import KAnoCLIPConfig
from kanoclip.model.fusion import BiCMCI
from kanoclip.model.prompts import PromptLearner, TextTower
from kanoclip.model.references import reference_map
from kanoclip.model.scoring import fuse_levels, gaussian_blur, image_scores, level_maps, text_probabilities

LEARNABLE_PREFIXES = ("prompts.", "bi_cmci.", "adapter.")


@dataclass
class Output:
    """Per image: an anomaly score in [0, 1] and an anomaly map at the input's resolution (anomalib's names)."""

    pred_score: torch.Tensor  # (B,)
    anomaly_map: torch.Tensor  # (B, H, W)


@dataclass
class TrainingOutput(Output):
    """What the losses need besides scores and maps, all at the run resolution."""

    image_logits: torch.Tensor  # (B, 2): cos(g', [t_n, t_a]) / τ
    level_probs: torch.Tensor  # (B, L, 2, R, R): per-level normal/abnormal probabilities
    text: torch.Tensor  # (2, D): [t_n, t_a]


class KAnoCLIP(nn.Module):
    """The full model. `forward(images)` takes RGB in [0, 1], (B, 3, H, W), any H and W."""

    clip: Any  # the frozen open_clip model
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: KAnoCLIPConfig | None = None, backbone: Backbone | None = None) -> None:
        super().__init__()
        config = config or KAnoCLIPConfig()
        config.validate()
        backbone = backbone or load_backbone(config)
        text_layers = len(TextTower(backbone.clip).owner.transformer.resblocks)
        if backbone.quick_gelu is not None:
            config = config.replace(quick_gelu=backbone.quick_gelu)  # recorded in every checkpoint (SPEC §3.1)
        self.config = config.resolve(len(backbone.visual.transformer.resblocks), text_layers)
        self.backbone_source = backbone.source
        self.backbone_fingerprint = backbone.fingerprint
        self.tokenizer = backbone.tokenizer
        self.clip = backbone.clip
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)
        dim = int(backbone.visual.output_dim)
        self.feature_dim = dim  # of the taps, the text and the few-shot bank
        self.prompts = PromptLearner(self.clip, self.tokenizer, self.config)
        self.bi_cmci = BiCMCI(
            dim, self.config.bi_cmci_heads, len(self.config.tap_layers or ()), self.config.bi_cmci_shared
        )
        self.adapter = build_adapter(self.config.adapter, dim, self.config.adapter_reduction, self.config.adapter_ratio)
        taps = list(self.config.tap_layers or ())
        self._free_levels = [taps.index(t) for t in self.config.training_free_taps or ()]
        self._knowledge_text: torch.Tensor | None = None
        self._prompt_cache: torch.Tensor | None = None
        self._bank: list[torch.Tensor] | None = None  # few-shot bank per tap level (SPEC §9)

    # -- text side -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, sentences: list[str]) -> torch.Tensor:
        """Frozen CLIP text embeddings of plain sentences (truncated at 77 tokens), L2-normalised: (N, D)."""
        tokens = self.tokenizer(sentences).to(self.mean.device)
        return F.normalize(self.clip.encode_text(tokens).float(), dim=-1)

    def setup(
        self,
        *,
        text: torch.Tensor | EllipsisType | None = ...,
        bank: list[torch.Tensor] | EllipsisType | None = ...,
    ) -> None:
        """Condition the model for a product; `...` leaves a part as it is.

        Args:
            text: training-free mode: fixed [t_n, t_a] (2, D) from sentences (`knowledge.training_free_text`) replace
                the learned prompts, and maps fuse `training_free_taps` only. None returns to the learned prompts.
            bank: few-shot references (SPEC §9): unit patch features (M, D) per tap level, on the model's device.
                None: zero-shot. Swapped in one assignment, so a forward sees the old bank or the new one, never a mix.
        """
        if not isinstance(text, EllipsisType):
            self._knowledge_text = None if text is None else F.normalize(text.float(), dim=-1).to(self.mean.device)
        if not isinstance(bank, EllipsisType):
            self._bank = bank

    def encode_prompts(self) -> torch.Tensor:
        """The learned prompts encoded once and kept, so that an exported graph holds them as a constant."""
        with torch.no_grad():
            self._prompt_cache = self.prompts()
        return self._prompt_cache

    @property
    def training_free(self) -> bool:
        return self._knowledge_text is not None

    def text_features(self) -> torch.Tensor:
        """[t_n, t_a] (2, D); outside training the learned prompts are encoded once and reused."""
        if self._knowledge_text is not None:
            return self._knowledge_text.to(self.mean.device)
        if self.training or torch.is_grad_enabled():
            return self.prompts()
        if self._prompt_cache is None or self._prompt_cache.device != self.mean.device:
            return self.encode_prompts()
        return self._prompt_cache

    def train(self, mode: bool = True) -> KAnoCLIP:
        super().train(mode)
        self.clip.eval()  # frozen: no train-mode behaviour in CLIP, ever
        self._prompt_cache = None
        return self

    # -- forward ---------------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> Output:
        out = self._run(images, training=False)
        return Output(out.pred_score, out.anomaly_map)

    def forward_train(self, images: torch.Tensor) -> TrainingOutput:
        """Forward with everything the losses need; images should already be at the run resolution."""
        return self._run(images, training=True)

    def _run(self, images: torch.Tensor, training: bool) -> TrainingOutput:
        size = (self.config.image_size, self.config.image_size)
        in_size = (images.shape[-2], images.shape[-1])
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        if in_size != size:
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        return self.head(self.encode_image(x), in_size, training)

    @torch.no_grad()
    def reference_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Good parts' unit CLIP-VV tap features for a few-shot bank: RGB in [0, 1] at the run resolution
        (B, 3, S, S) -> per tap level (B * N, D)."""
        taps = F.normalize(self.encode_image((images - self.mean) / self.std).taps.float(), dim=-1)  # (B, L, N, D)
        return [taps[:, i].reshape(-1, taps.shape[-1]) for i in range(taps.shape[1])]

    def encode_image(self, x: torch.Tensor) -> VisualFeatures:
        """The frozen CLIP-VV forward on normalised images at the run resolution: the method's cost floor."""
        cfg = self.config
        with torch.no_grad():
            return encode_image(
                self.clip.visual, x, cfg.vv_start_layer or 1, cfg.tap_layers or (), cfg.tap_mode, cfg.global_ln_post
            )

    def head(self, feats: VisualFeatures, in_size: tuple[int, int], training: bool = False) -> TrainingOutput:
        """Everything after CLIP: adapter, Bi-CMCI, probabilities, maps (at `in_size`) and scores."""
        cfg = self.config
        size = (cfg.image_size, cfg.image_size)
        text = self.text_features()
        g = self.adapter(feats.global_token, feats.patch_tokens, feats.grid)  # (B, D)
        image_logits = g @ text.t().to(g.dtype) / cfg.temperature
        patches, text_fused = self.bi_cmci(F.normalize(feats.taps, dim=-1), text)
        probs = text_probabilities(patches, text_fused, cfg.temperature)  # (B, L, N, 2)
        levels = level_maps(probs if training else probs[..., 1:], feats.grid, size)  # (B, L, C, R, R)
        abnormal = levels[:, :, -1].float()  # (B, L, S, S)
        used = self.map_levels(training)
        maps = gaussian_blur(fuse_levels(abnormal[:, used], cfg.level_fusion), cfg.map_sigma)
        scores = image_scores(image_logits.float().softmax(-1), maps, cfg.score_mode)
        references = self._bank  # read once: a concurrent swap never mixes two banks in one forward
        if references is not None and not training:
            taps = F.normalize(feats.taps[:, used], dim=-1)
            bank = [references[i] for i in used]
            ref = reference_map(taps, bank, feats.grid, size, cfg.level_fusion, cfg.map_sigma, cfg.reference_chunk)
            maps = (maps + cfg.reference_weight * ref) / (1 + cfg.reference_weight)
            if cfg.reference_score == "mean":
                scores = 0.5 * (scores + ref.flatten(1).amax(dim=1))
        if in_size != size:
            maps = F.interpolate(maps[:, None], size=in_size, mode="bilinear", align_corners=False)[:, 0]
        return TrainingOutput(scores, maps, image_logits, levels, text)

    def map_levels(self, training: bool = False) -> list[int]:
        """Indices of the tap levels whose maps are fused: the deep taps in training-free mode, else all."""
        if self.training_free and not training:
            return self._free_levels
        return list(range(len(self.config.tap_layers or ())))

    # -- parameters ------------------------------------------------------------------------------------------------
    def learnable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith(LEARNABLE_PREFIXES)}

    def load_learnable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.learnable_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(
                f"learnable weights do not match this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.load_state_dict(state, strict=False)
        self._prompt_cache = None

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part, and frozen vs learnable totals."""
        counts = {
            name: sum(p.numel() for p in getattr(self, name).parameters()) for name in ("prompts", "bi_cmci", "adapter")
        }
        counts["clip_frozen"] = sum(p.numel() for p in self.clip.parameters())
        counts["learnable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        counts["frozen"] = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return counts
