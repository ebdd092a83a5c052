"""The paper's metrics: one-vs-rest AUC of the 17 categories and their mean,
accuracy of the 8 tasks and their mean, and precision / sensitivity /
specificity of the melanoma-related categories.

numpy only, because `edgederm bench` scores bundles on the device, where
scikit-learn is not installed. The AUC is the Mann-Whitney statistic with tied
scores given their average rank, which is exactly what scikit-learn's
`roc_auc_score` computes (tests/test_evaluation.py checks the two agree).

Inputs are numpy arrays: probabilities N x 24 (each task's slice sums to one,
layout of `edgederm.labels`) and labels N x 8 (class index per task).
A category absent (or present in every case) of a split has no AUC: it is
reported as None and left out of the mean, which says how many it averaged.
"""
from __future__ import annotations

import numpy as np

from edgederm import labels as L


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of `score` for the boolean `positive`; both classes must be present."""
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0    # 1-based rank of each distinct score, ties averaged
    ranks = average_rank[inverse.ravel()]
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _task_probs(probs: np.ndarray, task: str) -> np.ndarray:
    return probs[:, L.TASK_SLICES[task]]


def category_aucs(probs: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    out = {}
    for task, cls in L.AUC_CATEGORIES:
        t = L.TASK_KEYS.index(task)
        c = L.class_index(task, cls)
        positive = labels[:, t] == c
        if positive.all() or not positive.any():
            out[L.category_name(task, cls)] = None
        else:
            out[L.category_name(task, cls)] = roc_auc(positive, _task_probs(probs, task)[:, c])
    return out


def averaged_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    values = [v for v in category_aucs(probs, labels).values() if v is not None]
    return float(np.mean(values)) if values else float("nan")


def task_accuracies(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {task: float(np.mean(labels[:, t] == _task_probs(probs, task).argmax(1)))
            for t, task in enumerate(L.TASK_KEYS)}


def melanoma_category_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    out = {}
    for task, cls in L.MELANOMA_CATEGORIES:
        t, c = L.TASK_KEYS.index(task), L.class_index(task, cls)
        truth = labels[:, t] == c
        predicted = _task_probs(probs, task).argmax(1) == c
        out[L.category_name(task, cls)] = {
            "precision": _ratio(int((truth & predicted).sum()), int(predicted.sum())),
            "sensitivity": _ratio(int((truth & predicted).sum()), int(truth.sum())),
            "specificity": _ratio(int((~truth & ~predicted).sum()), int((~truth).sum())),
        }
    return out


def seven_point_scores(classes: np.ndarray) -> np.ndarray:
    """Seven-point checklist score of each row of an N x 8 array of class indices (predicted or true)."""
    score = np.zeros(len(classes), dtype=int)
    for task, cls, points in L.SEVEN_POINT_CRITERIA:
        score += points * (classes[:, L.TASK_KEYS.index(task)] == L.class_index(task, cls))
    return score


def compute_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """All of the paper's figures for one set of predictions (fractions, not percent)."""
    aucs = category_aucs(probs, labels)
    defined = [v for v in aucs.values() if v is not None]
    accs = task_accuracies(probs, labels)
    return {
        "cases": int(len(labels)),
        "auc": aucs,
        "avg_auc": float(np.mean(defined)) if defined else float("nan"),
        "auc_categories_averaged": len(defined),
        "acc": accs,
        "avg_acc": float(np.mean(list(accs.values()))),
        "melanoma": melanoma_category_scores(probs, labels),
    }


def location_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """The clinical-only network's auxiliary body-location task (N x 9 probabilities, N indices): accuracy
    and one-vs-rest AUC per location. Reported beside the eight tasks, never in the averaged AUC."""
    names = L.METADATA_FIELDS["location"]
    auc = {name: roc_auc(labels == i, probs[:, i]) if 0 < (labels == i).sum() < len(labels) else None
           for i, name in enumerate(names)}
    defined = [v for v in auc.values() if v is not None]
    return {"cases": int(len(labels)), "acc": float(np.mean(probs.argmax(1) == labels)), "auc": auc,
            "avg_auc": float(np.mean(defined)) if defined else None,
            "note": "auxiliary task: not part of the 17-category averaged AUC"}
