"""The model's final answer from its branches: P_FI = W_C P_C + W_D P_D + W_FU P_FU.

The weights are searched on valid after training (edgederm.training.branch_weights) and saved with the
run; the exported graphs apply them inside, and evaluation applies them here to per-branch probabilities.
numpy only, like the rest of edgederm.scoring.
"""
from __future__ import annotations

import numpy as np


def weighted_final(branch_probs: dict[str, np.ndarray], weights) -> np.ndarray:
    """P_FI = W_C P_C + W_D P_D + W_FU P_FU: `weights` in the order of the branches in `branch_probs`
    (a "final" entry already there is not a branch)."""
    branches = [b for b in branch_probs if b != "final"]
    if len(branches) != len(weights):
        raise ValueError(f"{len(weights)} branch weights for {len(branches)} branches ({', '.join(branches)})")
    return sum(float(w) * branch_probs[b] for w, b in zip(weights, branches))
