"""The paper's metrics, from scikit-learn: one-vs-rest AUC of the 17 categories
and their mean, accuracy of the 8 tasks and their mean, and precision /
sensitivity / specificity of the melanoma-related categories.

Inputs are numpy arrays: probabilities N x 24 (each task's slice sums to one,
layout of `edgederm.labels`) and labels N x 8 (class index per task).
A category absent (or present in every case) of a split has no AUC: it is
reported as None and left out of the mean, which says how many it averaged.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score

from edgederm import labels as L


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
            out[L.category_name(task, cls)] = float(roc_auc_score(positive, _task_probs(probs, task)[:, c]))
    return out


def averaged_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    values = [v for v in category_aucs(probs, labels).values() if v is not None]
    return float(np.mean(values)) if values else float("nan")


def task_accuracies(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {task: float(accuracy_score(labels[:, t], _task_probs(probs, task).argmax(1)))
            for t, task in enumerate(L.TASK_KEYS)}


def melanoma_category_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    out = {}
    for task, cls in L.MELANOMA_CATEGORIES:
        t, c = L.TASK_KEYS.index(task), L.class_index(task, cls)
        truth = (labels[:, t] == c).astype(int)
        predicted = (_task_probs(probs, task).argmax(1) == c).astype(int)
        out[L.category_name(task, cls)] = {
            "precision": float(precision_score(truth, predicted, zero_division=0)),
            "sensitivity": float(recall_score(truth, predicted, zero_division=0)),
            "specificity": float(recall_score(1 - truth, 1 - predicted, zero_division=0)),
        }
    return out


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
