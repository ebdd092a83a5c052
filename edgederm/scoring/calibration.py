"""Outputs a clinician can act on: calibrated probabilities, and melanoma
decisions at operating points chosen on the validation split.

Calibration. A probability of 0.8 should be right four times in five. Each
task's probabilities are scored by the expected calibration error (ECE:
top-label confidence against accuracy in 15 equal-width bins, Guo et al.,
"On Calibration of Modern Neural Networks", ICML 2017) and rescaled by one
temperature per task fitted on valid (the same paper's temperature scaling).
The model outputs P_FI, a weighted average of three branches' softmaxes, not
logits; the temperature therefore acts on its log-probabilities,
p_T = softmax(log P_FI / T), which is temperature scaling of the logits for
a single softmax and keeps every task's argmax (so accuracy) unchanged. T is
the minimiser of the negative log-likelihood on valid; the NLL is convex in
1/T, so a golden-section search finds it.

The seven-point reading. The checklist adds 2 points for each major and 1
for each minor criterion present; 3 or more is suspicious for melanoma. Read
from each criterion's argmax, a rare class (VS IR, 7 % of cases) almost
never gives its points. The *expected* score sums each criterion's points
times its probability (calibrated), a continuous score whose threshold is
chosen on valid: the highest that refers at least the target share of the
valid melanomas (default 90 %). The model's own P(MEL) gets an operating
point the same way. Both are then reported on the evaluated split beside the
argmax reading at 3, as sensitivity and specificity for DIAG MEL.

numpy only: a bundle's temperatures and thresholds are applied on the
device.
"""
from __future__ import annotations

import math

import numpy as np

from edgederm import labels as L

ECE_BINS = 15
DEFAULT_TARGET_SENSITIVITY = 0.90
# Where the fit is stored: RUN/calibration.json, the weights' metadata, a bundle's manifest (stored_calibration).
CALIBRATION_KEY, LEGACY_CALIBRATION_KEY = "calibration", "clinical"
_EPS = 1e-12


def _task(probs: np.ndarray, task: str) -> np.ndarray:
    return probs[:, L.TASK_SLICES[task]]


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """Top-label ECE of one task's N x K probabilities against its N labels, and the reliability bins
    (those with cases): lower and upper edge, cases, mean confidence, accuracy."""
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    ece, rows = 0.0, []
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        if not n:
            continue
        conf, acc = float(confidence[members].mean()), float(correct[members].mean())
        ece += n / len(labels) * abs(acc - conf)
        rows.append({"lower": b / bins, "upper": (b + 1) / bins, "cases": n, "confidence": conf, "accuracy": acc})
    return ece, rows


def temperature_scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) over the last axis."""
    logits = np.log(np.clip(probs, _EPS, None)) / temperature
    logits -= logits.max(-1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(-1, keepdims=True)


def _nll(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = temperature_scale(probs, temperature)
    return float(-np.log(np.clip(scaled[np.arange(len(labels)), labels], _EPS, None)).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray, lowest: float = 0.05, highest: float = 20.0) -> float:
    """The T in [lowest, highest] minimising the NLL of one task's labels: a golden-section search on
    1/T, in which the NLL is convex."""
    a, b = 1 / highest, 1 / lowest
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _nll(probs, labels, 1 / c), _nll(probs, labels, 1 / d)
    while b - a > 1e-4:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _nll(probs, labels, 1 / c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _nll(probs, labels, 1 / d)
    return float(2 / (a + b))


def apply_temperatures(probs: np.ndarray, temperatures: dict[str, float]) -> np.ndarray:
    """N x 24 probabilities with each task rescaled by its temperature (tasks without one unchanged)."""
    out = probs.astype(np.float64, copy=True)
    for task, temperature in temperatures.items():
        out[:, L.TASK_SLICES[task]] = temperature_scale(_task(probs, task).astype(np.float64), temperature)
    return out


def argmax_seven_point_score(probs: np.ndarray) -> np.ndarray:
    """The checklist score from each criterion's most probable class."""
    score = np.zeros(len(probs))
    for task, cls, points in L.SEVEN_POINT_CRITERIA:
        score += points * (_task(probs, task).argmax(1) == L.class_index(task, cls))
    return score


def expected_seven_point_score(probs: np.ndarray) -> np.ndarray:
    """sum over criteria of points x P(criterion present)."""
    score = np.zeros(len(probs))
    for task, cls, points in L.SEVEN_POINT_CRITERIA:
        score += points * _task(probs, task)[:, L.class_index(task, cls)]
    return score


def melanoma_probability(probs: np.ndarray) -> np.ndarray:
    return _task(probs, "DIAG")[:, L.class_index("DIAG", "MEL")]


def is_melanoma(labels: np.ndarray) -> np.ndarray:
    return labels[:, L.TASK_KEYS.index("DIAG")] == L.class_index("DIAG", "MEL")


def threshold_for_sensitivity(scores: np.ndarray, positive: np.ndarray, target: float) -> float:
    """A threshold t that refers (score >= t) at least `target` of the positives and as few cases as
    possible: halfway between the lowest positive score that must be referred and the next lower score of
    any case. Halfway, not at that score: a threshold equal to a case's score would leave the case on the
    boundary, where the smallest change (INT8 noise) flips its reading."""
    ranked = np.sort(scores[positive])[::-1]
    if not len(ranked):
        raise ValueError("no positive case to choose a threshold on")
    needed = max(1, math.ceil(target * len(ranked) - 1e-9))
    lowest = ranked[needed - 1]
    below = scores[scores < lowest]
    return float((lowest + below.max()) / 2) if len(below) else float(lowest)


def operating_point(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict:
    referred = scores >= threshold
    tp, fn = int((referred & positive).sum()), int((~referred & positive).sum())
    tn, fp = int((~referred & ~positive).sum()), int((referred & ~positive).sum())
    return {"threshold": float(threshold), "positives": tp + fn, "negatives": tn + fp,
            "sensitivity": tp / (tp + fn) if tp + fn else None, "specificity": tn / (tn + fp) if tn + fp else None,
            "referred_percent": 100 * float(referred.mean())}


def fit_calibration(probs: np.ndarray, labels: np.ndarray, target: float = DEFAULT_TARGET_SENSITIVITY) -> dict:
    """What a model carries to the device, fitted on the valid split's P_FI: a temperature per task, the
    expected seven-point score's threshold and P(MEL)'s threshold at the target melanoma sensitivity."""
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity {target} must be in (0, 1]")
    temperatures = {task: fit_temperature(_task(probs, task), labels[:, t]) for t, task in enumerate(L.TASK_KEYS)}
    calibrated = apply_temperatures(probs, temperatures)
    melanoma = is_melanoma(labels)
    fit = {"fitted_on": {"split": "valid", "cases": int(len(labels)), "melanomas": int(melanoma.sum())},
           "temperatures": temperatures, "target_sensitivity": target,
           # no melanoma to choose a threshold on: the checklist's own rule, and no P(MEL) operating point
           "seven_point": {"reading": "checklist", "threshold": L.SEVEN_POINT_THRESHOLD},
           "melanoma_probability_threshold": None}
    if melanoma.any():
        fit["seven_point"] = {"reading": "expected", "threshold": threshold_for_sensitivity(
            expected_seven_point_score(calibrated), melanoma, target)}
        fit["melanoma_probability_threshold"] = threshold_for_sensitivity(melanoma_probability(calibrated),
                                                                          melanoma, target)
    # what the chosen threshold gives on the split it was chosen on: the clinic's figure a sweep ranks beside the
    # AUC, carried with the fit so reports show it for the model a bundle holds
    fit["valid_operating_point"] = calibration_report(fit, probs, labels)["operating_point"]
    return fit


def calibration_report(fit: dict, probs: np.ndarray, labels: np.ndarray) -> dict:
    """Calibration and melanoma operating points of P_FI on one split, with the thresholds of `fit`."""
    calibrated = apply_temperatures(probs, fit["temperatures"])
    tasks = {}
    for t, task in enumerate(L.TASK_KEYS):
        before, bins_before = expected_calibration_error(_task(probs, task), labels[:, t])
        after, bins_after = expected_calibration_error(_task(calibrated, task), labels[:, t])
        tasks[task] = {"temperature": fit["temperatures"][task], "ece": before, "ece_calibrated": after,
                             "reliability": bins_before, "reliability_calibrated": bins_after}
    melanoma = is_melanoma(labels)
    points = {"seven_point_argmax": operating_point(argmax_seven_point_score(calibrated), melanoma,
                                                    L.SEVEN_POINT_THRESHOLD)}
    if fit["seven_point"]["reading"] == "expected":          # fits without a melanoma on valid have neither
        points["seven_point_expected"] = operating_point(expected_seven_point_score(calibrated), melanoma,
                                                         fit["seven_point"]["threshold"])
    if fit.get("melanoma_probability_threshold") is not None:
        points["melanoma_probability"] = operating_point(melanoma_probability(calibrated), melanoma,
                                                         fit["melanoma_probability_threshold"])
    return {"tasks": tasks, "target_sensitivity": fit["target_sensitivity"], "melanoma": points,
            "operating_point": clinic_operating_point(points, fit)}


def stored_calibration(record: dict) -> dict | None:
    """The fit a run's weights metadata or a bundle's manifest carries, or None. Runs and bundles written
    before the fit was named calibration call it `clinical` (RUN/clinical.json, manifest "clinical"); they
    still load. In those manifests "calibration" is the INT8 calibration set (now "calibration_set"), so the
    old name decides."""
    if LEGACY_CALIBRATION_KEY in record:
        return record[LEGACY_CALIBRATION_KEY]
    return record.get(CALIBRATION_KEY)


def clinic_operating_point(points: dict, fit: dict) -> dict:
    """The figure a clinic plans referrals by: the reading `diagnose` reports (the expected seven-point score at
    its valid-chosen threshold, or the checklist's >= 3 when valid had no melanoma to choose one on), with its
    melanoma sensitivity, specificity and the share of patients referred on this split."""
    key = "seven_point_expected" if "seven_point_expected" in points else "seven_point_argmax"
    op = points[key]
    return {"reading": key, "target_sensitivity": fit["target_sensitivity"], "threshold": op["threshold"],
            "sensitivity": op["sensitivity"], "specificity": op["specificity"],
            "referred_percent": op["referred_percent"]}


def describe_operating_point(op: dict) -> str:
    """One line: '... melanoma sensitivity 90.0 %, specificity 48.3 %, 62.0 % of patients referred'."""
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f} %"
    where = (f"the valid-chosen threshold for {100 * op['target_sensitivity']:.0f} % melanoma sensitivity "
             f"(expected seven-point score >= {op['threshold']:.3g})" if op["reading"] == "seven_point_expected"
             else "the checklist's >= 3 (valid had no melanoma to choose a threshold on)")
    return (f"clinic operating point at {where}: melanoma sensitivity {pct(op['sensitivity'])}, specificity "
            f"{pct(op['specificity'])}, {op['referred_percent']:.1f} % of patients referred")
