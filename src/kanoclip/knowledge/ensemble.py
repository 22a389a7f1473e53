"""A compositional prompt ensemble for training-free text features, in the manner of WinCLIP (Jeong et al., 2023):
every state word (how a normal or a defective object is described) inside every template (how a photo is
described), for the class name. The averaged embeddings are steadier than any one sentence.

The lists are ours; the idea (state words x templates, averaged per state) is the paper's. Articles follow the filled
words ("an unblemished bottle", "an object").
"""

from __future__ import annotations

from kanoclip.knowledge.lint import agree

NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ABNORMAL_STATES = (
    "damaged {}",
    "broken {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)
TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of the {}.",
    "a jpeg corrupted photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "there is a {} in the scene.",
    "this is a {} in the scene.",
    "an industrial photo of a {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for anomaly detection.",
)


def ensemble_sentences(name: str) -> tuple[list[str], list[str]]:
    """(normal, abnormal) sentences for a class name (`metal_nut` reads as "metal nut")."""
    word = name.replace("_", " ").strip() or "object"

    def fill(states: tuple[str, ...]) -> list[str]:
        return [agree(template.format(state.format(word))) for state in states for template in TEMPLATES]

    return fill(NORMAL_STATES), fill(ABNORMAL_STATES)
