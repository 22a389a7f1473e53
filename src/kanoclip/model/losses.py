"""Training losses: KD (SPEC §3.2.3, I7), CE on the global branch, focal + dice on the maps (§4, I13).

L_total = alpha · L_KD + beta · L_global + gamma · L_local
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kanoclip.model.config import KAnoCLIPConfig


@dataclass
class KnowledgeTargets:
    """Frozen-CLIP text embeddings of the general knowledge sentences, L2-normalised rows (N, D)."""

    normal: torch.Tensor
    abnormal: torch.Tensor

    def means(self) -> torch.Tensor:
        """[k̄_n, k̄_a]: the re-normalised mean of each set, (2, D)."""
        return F.normalize(torch.stack([self.normal.mean(0), self.abnormal.mean(0)]), dim=-1)

    def to(self, device: torch.device | str) -> KnowledgeTargets:
        return KnowledgeTargets(self.normal.to(device), self.abnormal.to(device))


def kd_loss(
    text: torch.Tensor,
    targets: KnowledgeTargets,
    mode: str = "cos",
    temperature: float = 0.07,
    image_knowledge: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pull the learned prompts [t_n, t_a] (2, D) toward the knowledge base.

    General part: `cos` = Σ (1 − cos(t, k̄)), `l2` = Σ ‖t − k̄‖², `contrastive` = every knowledge sentence classified
    by the prompts (CE over [t_n, t_a] / τ). Image part (VQA knowledge, (B, D) with labels (B,)): each image's
    description classified by the prompts.
    """
    text = text.float()
    loss = text.new_zeros(())
    if mode in ("cos", "cos+contrastive"):
        loss = loss + (1 - (text * targets.means()).sum(-1)).sum()
    if mode == "l2":
        loss = loss + ((text - targets.means()) ** 2).sum()
    if mode in ("contrastive", "cos+contrastive"):
        sentences = torch.cat([targets.normal, targets.abnormal])
        y = torch.cat([torch.zeros(len(targets.normal)), torch.ones(len(targets.abnormal))]).long()
        loss = loss + F.cross_entropy(sentences @ text.t() / temperature, y.to(text.device))
    if image_knowledge is not None and labels is not None:
        loss = loss + F.cross_entropy(image_knowledge.float() @ text.t() / temperature, labels.long())
    return loss


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, eps: float = 1e-5) -> torch.Tensor:
    """Focal loss on probabilities (B, 2, H, W) against a binary mask (B, H, W), mean over pixels."""
    pt = torch.where(target > 0.5, probs[:, 1], probs[:, 0]).clamp(eps, 1.0)
    return (-((1 - pt) ** gamma) * pt.log()).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − mean over images of (2Σpg + 1) / (Σp + Σg + 1); pred and target (B, H, W)."""
    inter = (pred * target).flatten(1).sum(1)
    total = pred.flatten(1).sum(1) + target.flatten(1).sum(1)
    return 1 - ((2 * inter + 1) / (total + 1)).mean()


def local_loss(level_probs: torch.Tensor, masks: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Σ over levels of focal + dice(abnormal, gt) + dice(normal, 1 − gt); level_probs (B, L, 2, H, W)."""
    probs = level_probs.float()
    masks = masks.float()
    total = probs.new_zeros(())
    if probs.shape[0] == 0:
        return total  # no image of the batch has a mask (anomalous images without ground truth)
    for level in range(probs.shape[1]):  # four levels: a loop over a handful of whole-batch terms
        p = probs[:, level]
        total = total + focal_loss(p, masks, gamma) + dice_loss(p[:, 1], masks) + dice_loss(p[:, 0], 1 - masks)
    return total


def total_loss(
    config: KAnoCLIPConfig,
    text: torch.Tensor,
    image_logits: torch.Tensor,
    level_probs: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    targets: KnowledgeTargets,
    image_knowledge: torch.Tensor | None = None,
    knowledge_labels: torch.Tensor | None = None,
    has_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every term and their weighted sum under "total".

    `image_knowledge` (K, D) with `knowledge_labels` (K,): the VQA descriptions of the batch's images that have one.
    `has_mask` (B,) bool: the local loss uses only images with ground truth (normal images count, as all-zero).
    """
    if has_mask is not None:
        level_probs, masks = level_probs[has_mask], masks[has_mask]
    terms = {
        "kd": kd_loss(text, targets, config.kd_mode, config.kd_temperature, image_knowledge, knowledge_labels),
        "global": F.cross_entropy(image_logits.float(), labels.long()),
        "local": local_loss(level_probs, masks, config.focal_gamma),
    }
    terms["total"] = config.alpha * terms["kd"] + config.beta * terms["global"] + config.gamma * terms["local"]
    return terms
