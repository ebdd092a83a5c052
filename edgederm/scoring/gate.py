"""The FP32-reference gate: is a variant non-inferior to its reference on the same cases?

Accuracy. Both models are scored on the same cases, so their AUCs are
correlated and the question is about the paired difference. We resample the
cases with a paired, stratified percentile bootstrap (Efron & Tibshirani,
"An Introduction to the Bootstrap", 1993, ch. 13; strata as in Davison &
Hinkley, "Bootstrap Methods and their Application", 1997, sec. 3.7): each
resample draws, within every diagnosis class, as many cases as the class has,
with replacement, and scores the reference and the variant on that same
resample. Stratifying by diagnosis keeps every diagnosis category present in
every resample. Averaged AUC is the mean over the categories that have an
AUC on the full split (a category that loses its positives or negatives in
a resample is left out of that resample's mean, for both models alike).

- A variant passes when the one-sided 95 % upper confidence bound of its
  averaged-AUC drop (the 95th percentile of the resampled drops) is within
  the margin (`--max-auc-drop`, AUC points): the test split then shows, at
  95 % confidence, that the variant loses no more than the margin.
- Each category reports its drop, a two-sided 95 % interval and its number of
  positives. With fewer than MIN_POSITIVES positives (or negatives) it is
  "not gated": a handful of cases cannot tell a 3-point drop from noise. It
  *fails* only when its drop is significant (the interval excludes 0) and
  larger than twice the margin.

Decisions. A clinic acts on the top diagnosis and on the seven-point reading
(score >= 3: refer), not on an AUC. Per variant, the cases whose top
diagnosis or seven-point reading differs from the reference's are listed with
their ids, and each flip is marked "toward" the true label (the variant is
right where the reference was wrong), "away" from it (the reverse) or
"neither" (both wrong). Each rate carries its exact one-sided 95 % upper
bound (Clopper-Pearson: a rate seen on 121 cases is only an estimate) and the
net direction (away minus toward the truth, percent of cases) with its paired
bootstrap interval. The melanoma sensitivity of the seven-point reading (the
share of MEL cases it refers) is compared the same way. A variant fails when
a flip rate exceeds `--max-flip-rate` (default 2 % of cases; the observed
rate, since an upper bound below 2 % needs over 150 cases without a single
flip) or when it loses melanoma sensitivity significantly (the paired
interval of the loss excludes 0).

How close was the call? Each flipped case carries the FP32 decision's margin
(`reference_margin`): for the diagnosis, its top probability minus the second;
for the seven-point reading, how far the FP32 reading was from changing
(`reading_margins`). Flips whose margin exceeds CONFIDENT_MARGIN (0.1) are
counted as `confident_flips`: a variant that only flips near-ties changed
coin tosses, one with confident flips changed clear decisions. Reported
beside the rate; the gate itself still counts every flip.

numpy only: the gate runs on the device, inside `edgederm bench`. It lives in
the evaluation stage because export (left of benchmarks in the data flow)
applies the same gate to choose its INT8 graph on the valid split.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from edgederm import labels as L
from edgederm.errors import ConfigError
from edgederm.scoring.calibration import apply_temperatures, expected_seven_point_score
from edgederm.scoring.metrics import seven_point_scores

METHOD = ("paired stratified percentile bootstrap (Efron & Tibshirani 1993, ch. 13), strata: diagnosis class; "
          "one-sided 95 % upper bound on the averaged-AUC drop")
CONFIDENCE = 0.95
MIN_POSITIVES = 10
DEFAULT_MAX_FLIP_RATE = 2.0      # percent of cases: at most one patient in fifty told something different
# A flip whose FP32 decision was won by more than this (probability) changed a clear call, not a coin toss.
CONFIDENT_MARGIN = 0.1


@dataclass(frozen=True)
class GateSettings:
    max_auc_drop: float = 1.0            # margin, AUC points
    resamples: int = 2000
    seed: int = 0
    min_positives: int = MIN_POSITIVES
    max_flip_rate: float | None = DEFAULT_MAX_FLIP_RATE   # percent of cases; None: reported, not gated

    def __post_init__(self):
        if self.max_flip_rate is not None and not 0 <= self.max_flip_rate <= 100:
            raise ConfigError(f"--max-flip-rate {self.max_flip_rate:g}: a share of cases, between 0 and 100 percent")

    def describe(self) -> dict:
        return {"method": METHOD, "confidence": CONFIDENCE, **asdict(self)}


def bootstrap_counts(strata: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """resamples x N: how often each case is drawn in each resample, drawing within each stratum."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((resamples, len(strata)))
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        counts[:, members] = rng.multinomial(len(members), np.full(len(members), 1.0 / len(members)), size=resamples)
    return counts


def weighted_aucs(positive: np.ndarray, score: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The AUC of `score` on each resample (row of `counts`); NaN where a class is missing.

    Drawing a case k times is the same as weighting it by k, so a resample's AUC is
    sum_ij w_i w_j [s_i > s_j] (ties 1/2) over positives i and negatives j, divided by
    (sum_i w_i)(sum_j w_j): one matrix product for all resamples at once.
    """
    pos, neg = score[positive], score[~positive]
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    w_pos, w_neg = counts[:, positive], counts[:, ~positive]
    pairs = w_pos.sum(1) * w_neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, ((w_pos @ wins) * w_neg).sum(1) / pairs, np.nan)


def _interval(drops: np.ndarray) -> tuple[float, float]:
    low, high = np.nanpercentile(drops, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return float(low), float(high)


def auc_comparison(reference: np.ndarray, variant: np.ndarray, labels: np.ndarray,
                   settings: GateSettings) -> dict:
    """Paired bootstrap of the AUC drop (reference - variant, points), averaged and per category."""
    counts = bootstrap_counts(labels[:, L.TASK_KEYS.index("DIAG")], settings.resamples, settings.seed)
    everyone = np.ones((1, len(labels)))
    categories, ref_boot, var_boot, ref_full, var_full = {}, [], [], [], []
    for task, cls in L.AUC_CATEGORIES:
        t, c = L.TASK_KEYS.index(task), L.class_index(task, cls)
        column = L.TASK_SLICES[task].start + c
        positive = labels[:, t] == c
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        name = L.category_name(task, cls)
        if n_pos == 0 or n_neg == 0:
            categories[name] = {"positives": n_pos, "status": "no AUC", "drop_points": None, "ci_points": None}
            continue
        ref_b = weighted_aucs(positive, reference[:, column], counts)
        var_b = weighted_aucs(positive, variant[:, column], counts)
        ref_auc = float(weighted_aucs(positive, reference[:, column], everyone)[0])
        var_auc = float(weighted_aucs(positive, variant[:, column], everyone)[0])
        ref_boot.append(ref_b)
        var_boot.append(var_b)
        ref_full.append(ref_auc)
        var_full.append(var_auc)
        drop = 100 * (ref_auc - var_auc)
        low, high = _interval(100 * (ref_b - var_b))
        if min(n_pos, n_neg) < settings.min_positives:
            status = "not gated"
        elif low > 0 and drop > 2 * settings.max_auc_drop:
            status = "fail"
        else:
            status = "ok"
        categories[name] = {"positives": n_pos, "status": status, "drop_points": drop, "ci_points": [low, high]}
    drops = 100 * (np.nanmean(np.array(ref_boot), 0) - np.nanmean(np.array(var_boot), 0))
    upper = float(np.nanpercentile(drops, 100 * CONFIDENCE))
    return {"drop_points": 100 * (float(np.mean(ref_full)) - float(np.mean(var_full))),
            "ci_points": list(_interval(drops)), "upper_bound_points": upper,
            "within_margin": upper <= settings.max_auc_drop, "categories": categories}


def binomial_upper_bound(events: int, trials: int, confidence: float = CONFIDENCE) -> float:
    """Clopper-Pearson one-sided upper bound of a proportion: the p at which seeing `events` or fewer in
    `trials` has probability 1 - confidence (bisection on the binomial CDF, in logs; numpy-free)."""
    if trials == 0 or events >= trials:
        return 1.0

    def cdf(p: float) -> float:
        return sum(math.exp(math.lgamma(trials + 1) - math.lgamma(i + 1) - math.lgamma(trials - i + 1)
                            + i * math.log(p) + (trials - i) * math.log1p(-p)) for i in range(events + 1))

    low, high = events / trials, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) > 1 - confidence else (low, mid)
    return high


def top_two_margin(probs: np.ndarray) -> np.ndarray:
    """Per row, the highest probability minus the second highest: how clearly the top class won."""
    ordered = np.sort(probs, axis=1)
    return ordered[:, -1] - ordered[:, -2]


def reading_margins(reference: np.ndarray, variant: np.ndarray, calibration: dict | None = None) -> np.ndarray:
    """How close each FP32 seven-point reading was, as a probability. The expected-score reading
    (`referral` with a fitted `calibration`): |score - threshold| / 2, the smallest change of one criterion's
    probability (a criterion is worth at most 2 points) that crosses the threshold. The checklist reading:
    the largest FP32 top-two margin among the criteria whose top class the variant changed, the clearest
    call it had to overturn (0 where it changed none)."""
    if calibration and calibration.get("seven_point", {}).get("reading") == "expected":
        score = expected_seven_point_score(apply_temperatures(reference, calibration["temperatures"]))
        return np.abs(score - calibration["seven_point"]["threshold"]) / max(p for _, _, p in L.SEVEN_POINT_CRITERIA)
    margins = np.zeros(len(reference))
    for task in dict.fromkeys(task for task, _, _ in L.SEVEN_POINT_CRITERIA):
        columns = L.TASK_SLICES[task]
        changed = reference[:, columns].argmax(1) != variant[:, columns].argmax(1)
        margins = np.where(changed, np.maximum(margins, top_two_margin(reference[:, columns])), margins)
    return margins


def _flips(reference: np.ndarray, variant: np.ndarray, truth: np.ndarray, case_ids: list[str],
           counts: np.ndarray, margins: np.ndarray) -> dict:
    """Decisions (arrays of names) that differ, each marked toward / away from the truth or neither, with
    the FP32 decision's margin (`margins`, per case) and the count of confident flips."""
    flipped = np.flatnonzero(reference != variant)
    ref_right, var_right = reference == truth, variant == truth
    direction = np.where(var_right & ~ref_right, "toward", np.where(ref_right & ~var_right, "away", "neither"))
    n = len(truth)
    away = (reference != variant) & (direction == "away")
    toward = (reference != variant) & (direction == "toward")
    net = 100 * counts @ (away.astype(float) - toward) / n       # per bootstrap resample
    return {"flips": len(flipped), "cases": n, "rate_percent": 100.0 * len(flipped) / n if n else 0.0,
            "upper_bound_percent": 100 * binomial_upper_bound(len(flipped), n),
            "toward_truth": int(toward.sum()), "away_from_truth": int(away.sum()),
            "net_away_percent": 100.0 * (int(away.sum()) - int(toward.sum())) / n if n else 0.0,
            "net_away_ci_percent": list(_interval(net)),
            "confident_flips": int((margins[flipped] > CONFIDENT_MARGIN).sum()), "confident_margin": CONFIDENT_MARGIN,
            "flipped": [{"case_id": case_ids[i], "reference": str(reference[i]), "variant": str(variant[i]),
                         "truth": str(truth[i]), "direction": str(direction[i]),
                         "reference_margin": round(float(margins[i]), 4)} for i in flipped]}


def _seven_point_reading(classes: np.ndarray) -> np.ndarray:
    return np.where(seven_point_scores(classes) >= L.SEVEN_POINT_THRESHOLD, "refer", "no referral")


def referral(probs: np.ndarray, calibration: dict | None = None) -> np.ndarray:
    """The seven-point reading a model's outputs give ("refer" / "no referral"): the checklist on each
    criterion's top class, or, when the model carries its fitted `calibration` (edgederm.scoring.calibration),
    the expected score of its calibrated probabilities at its valid-chosen threshold."""
    if not calibration or calibration.get("seven_point", {}).get("reading") != "expected":
        return _seven_point_reading(_top_classes(probs))
    score = expected_seven_point_score(apply_temperatures(probs, calibration["temperatures"]))
    return np.where(score >= calibration["seven_point"]["threshold"], "refer", "no referral")


def _top_classes(probs: np.ndarray) -> np.ndarray:
    return np.stack([probs[:, L.TASK_SLICES[t]].argmax(1) for t in L.TASK_KEYS], 1)


def melanoma_sensitivity(reference: np.ndarray, variant: np.ndarray, labels: np.ndarray,
                         counts: np.ndarray, calibration: dict | None = None) -> dict:
    """Share of melanomas the seven-point reading (`referral`) refers, reference and variant, and the paired
    loss (points) with its bootstrap interval: the decision a clinic must not lose to quantization."""
    mel = labels[:, L.TASK_KEYS.index("DIAG")] == L.class_index("DIAG", "MEL")
    n = int(mel.sum())
    if n == 0:
        return {"melanomas": 0, "reference_percent": None, "variant_percent": None, "loss_points": None,
                "ci_points": None, "significant": False}
    ref = (referral(reference, calibration) == "refer")[mel].astype(float)
    var = (referral(variant, calibration) == "refer")[mel].astype(float)
    w = counts[:, mel]
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = 100 * (w @ (ref - var)) / w.sum(1)
    low, high = _interval(loss)
    return {"melanomas": n, "reference_percent": 100 * float(ref.mean()), "variant_percent": 100 * float(var.mean()),
            "loss_points": 100 * float(ref.mean() - var.mean()), "ci_points": [low, high], "significant": low > 0}


def decision_flips(reference: np.ndarray, variant: np.ndarray, labels: np.ndarray, case_ids: list[str],
                   counts: np.ndarray | None = None, calibration: dict | None = None) -> dict:
    """Cases whose top diagnosis, or whose seven-point reading (refer or not, `referral`), differs between the
    two models, each with the FP32 decision's margin (`top_two_margin` of the diagnosis probabilities,
    `reading_margins`). `counts`: the bootstrap resamples for the intervals (default: 2000, seed 0,
    stratified by diagnosis)."""
    if counts is None:
        counts = bootstrap_counts(labels[:, L.TASK_KEYS.index("DIAG")], GateSettings.resamples, GateSettings.seed)
    diagnoses = np.array(L.TASKS[0].classes)
    diag = L.TASK_SLICES["DIAG"]
    truth_diag = diagnoses[labels[:, L.TASK_KEYS.index("DIAG")]]
    return {"diagnosis": _flips(diagnoses[reference[:, diag].argmax(1)], diagnoses[variant[:, diag].argmax(1)],
                                truth_diag, case_ids, counts, top_two_margin(reference[:, diag])),
            "seven_point": _flips(referral(reference, calibration), referral(variant, calibration),
                                  _seven_point_reading(labels), case_ids, counts,
                                  reading_margins(reference, variant, calibration))}


def agreement(reference: np.ndarray, variant: np.ndarray, calibration: dict | None = None) -> float:
    """Share of cases whose top diagnosis and whose seven-point reading (`referral`) both match the
    reference's, the lower of the two: 1 - the larger flip rate (the metric INT8 accuracy control keeps
    within the limit)."""
    diag = L.TASK_SLICES["DIAG"]
    same_diagnosis = (reference[:, diag].argmax(1) == variant[:, diag].argmax(1)).mean()
    same_reading = (referral(reference, calibration) == referral(variant, calibration)).mean()
    return float(min(same_diagnosis, same_reading))


def judge(reference: np.ndarray, variant: np.ndarray, labels: np.ndarray, case_ids: list[str],
          settings: GateSettings, calibration: dict | None = None) -> dict:
    """Everything the gate says about one variant: AUC comparison, decision flips, verdict and reasons.
    `calibration`: the reference's fitted temperatures and thresholds; the seven-point decisions are then read
    as the device reads them (`referral`)."""
    auc = auc_comparison(reference, variant, labels, settings)
    counts = bootstrap_counts(labels[:, L.TASK_KEYS.index("DIAG")], settings.resamples, settings.seed)
    flips = decision_flips(reference, variant, labels, case_ids, counts, calibration)
    melanoma = melanoma_sensitivity(reference, variant, labels, counts, calibration)
    reasons = []
    if not auc["within_margin"]:
        reasons.append(f"averaged-AUC drop upper bound {auc['upper_bound_points']:.2f} > margin "
                       f"{settings.max_auc_drop:g} points")
    reasons += [f"{name} drops {c['drop_points']:.2f} points (95 % CI {c['ci_points'][0]:.2f} to "
                f"{c['ci_points'][1]:.2f}) > {2 * settings.max_auc_drop:g}"
                for name, c in auc["categories"].items() if c["status"] == "fail"]
    if settings.max_flip_rate is not None:
        reasons += [f"{key.replace('_', '-')} flips {f['rate_percent']:.1f} % of cases > {settings.max_flip_rate:g} %"
                    for key, f in flips.items() if f["rate_percent"] > settings.max_flip_rate]
        if melanoma["significant"]:
            reasons.append(f"seven-point reading refers {melanoma['loss_points']:.1f} points fewer melanomas "
                           f"(95 % CI {melanoma['ci_points'][0]:.1f} to {melanoma['ci_points'][1]:.1f})")
    reading = ("expected seven-point score >= {:.3g} (calibrated)".format(calibration["seven_point"]["threshold"])
               if calibration and calibration.get("seven_point", {}).get("reading") == "expected"
               else f"checklist score >= {L.SEVEN_POINT_THRESHOLD}")
    return {"auc": auc, "flips": flips, "melanoma_sensitivity": melanoma, "seven_point_reading": reading,
            "verdict": "fail" if reasons else "pass", "reasons": reasons}
