"""The shadow evaluation's numbers (#32) against sklearn on random labels and scores, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

from kanoclip.station.shadow import numbers


@pytest.mark.parametrize("seed", range(20))
def test_numbers_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = np.round(rng.random(n), 1)  # ties
    threshold = float(rng.choice(scores))
    got = numbers(labels.tolist(), scores.tolist(), threshold)
    predicted = scores >= threshold
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    assert (got["tn"], got["fp"], got["fn"], got["tp"]) == (tn, fp, fn, tp)
    assert got["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["f1"] == pytest.approx(f1_score(labels, predicted, zero_division=0.0), abs=1e-12)
    assert got["precision"] == pytest.approx(precision_score(labels, predicted, zero_division=0.0), abs=1e-12)
    assert got["recall"] == pytest.approx(recall_score(labels, predicted, zero_division=0.0), abs=1e-12)
    assert (got["rows"], got["good"], got["defect"]) == (n, int((labels == 0).sum()), int(labels.sum()))


def test_one_class_has_no_auroc_and_no_threshold_no_f1() -> None:
    assert numbers([0, 0, 0], [0.1, 0.2, 0.3], 0.2)["image_auroc"] is None
    got = numbers([0, 1], [0.1, 0.9], None)
    assert got["image_auroc"] == 1.0 and got["f1"] is None and got["tp"] is None
