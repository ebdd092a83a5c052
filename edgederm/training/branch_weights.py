"""The search for the branch weights W_C, W_D, W_FU on the validation split.

The paper searches them on validation data but does not say for what; we
maximise averaged AUC: it is the paper's headline metric and the one the INT8
gate later protects, and unlike accuracy it does not hinge on argmax
thresholds, which on ~200 validation cases move in coarse steps.
"""
from __future__ import annotations

import numpy as np

from edgederm.scoring.metrics import averaged_auc
from edgederm.scoring.weighted_average import weighted_final

METRIC = "validation averaged AUC of P_FI (17 categories)"


def weight_grid(step: float = 0.05, branches: int = 3) -> list[tuple[float, ...]]:
    """Every (W_C, W_D, W_FU) >= 0 summing to 1 on a grid of `step` (for 3 branches; one branch: (1,))."""
    n = round(1 / step)
    if abs(n * step - 1) > 1e-9:
        raise ValueError(f"step {step} must divide 1")
    if branches == 1:
        return [(1.0,)]
    if branches != 3:
        raise ValueError(f"the grid is written for 1 or 3 branches, not {branches}")
    return [(i / n, j / n, (n - i - j) / n) for i in range(n + 1) for j in range(n + 1 - i)]


def search_branch_weights(branch_probs: dict[str, np.ndarray], labels: np.ndarray,
                          step: float = 0.05) -> tuple[tuple[float, ...], float]:
    """The best weights (in the order of `branch_probs`) and their score. Ties go to the weights closest to
    equal."""
    best, best_key = None, None
    for weights in weight_grid(step, len(branch_probs)):
        score = averaged_auc(weighted_final(branch_probs, weights), labels)
        key = (round(score, 10), -float(np.sum((np.asarray(weights) - 1 / len(weights)) ** 2)))
        if best_key is None or key > best_key:
            best, best_key = (weights, score), key
    return best
