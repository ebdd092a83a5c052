"""The statistical gate on predictions made by the test: the paired bootstrap,
category rules, decision flips, and reproducibility."""
import numpy as np
import pytest

from edgederm import labels as L
from edgederm.scoring.gate import (
    CONFIDENT_MARGIN,
    GateSettings,
    auc_comparison,
    bootstrap_counts,
    decision_flips,
    judge,
    reading_margins,
    weighted_aucs,
)
from edgederm.scoring.metrics import compute_metrics, roc_auc

N = 300


@pytest.fixture(scope="module")
def cases():
    """Labels for N cases and a reference model that separates them well (about 0.85 AUC)."""
    rng = np.random.default_rng(11)
    labels = np.stack([rng.integers(0, k, N) for k in L.NUM_CLASSES], 1)
    parts = []
    for t, k in enumerate(L.NUM_CLASSES):
        logits = rng.normal(0, 1, (N, k))
        logits[np.arange(N), labels[:, t]] += 1.5
        parts.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    return labels, np.concatenate(parts, 1), [f"case{i}" for i in range(N)]


def test_weighting_by_counts_is_resampling(cases):
    labels, probs, _ = cases
    positive, score = labels[:, 0] == 2, probs[:, 2]
    counts = bootstrap_counts(labels[:, 0], 5, seed=3)
    for row in counts:
        drawn = np.repeat(np.arange(N), row.astype(int))      # the resample itself, duplicates and all
        expected = roc_auc(positive[drawn], score[drawn])
        assert weighted_aucs(positive, score, row[None])[0] == pytest.approx(expected, abs=1e-12)
    # stratified: every resample keeps each diagnosis's case count
    for d in range(5):
        assert (counts[:, labels[:, 0] == d].sum(1) == (labels[:, 0] == d).sum()).all()


def test_identical_predictions_pass_with_a_zero_interval(cases):
    labels, probs, ids = cases
    result = judge(probs, probs.copy(), labels, ids, GateSettings(resamples=300))
    assert result["verdict"] == "pass" and result["reasons"] == []
    assert result["auc"]["drop_points"] == 0 and result["auc"]["ci_points"] == [0.0, 0.0]
    assert result["flips"]["diagnosis"]["flips"] == 0 and result["flips"]["seven_point"]["flips"] == 0


def test_point_estimate_is_the_metrics_averaged_auc_difference(cases):
    labels, probs, ids = cases
    noisy = probs + np.random.default_rng(0).normal(0, 0.05, probs.shape)
    auc = auc_comparison(probs, noisy, labels, GateSettings(resamples=200))
    expected = 100 * (compute_metrics(probs, labels)["avg_auc"] - compute_metrics(noisy, labels)["avg_auc"])
    assert auc["drop_points"] == pytest.approx(expected, abs=1e-9)
    assert auc["ci_points"][0] <= auc["drop_points"] <= auc["ci_points"][1]


def test_a_significant_large_category_drop_fails_and_a_rare_one_is_not_gated(cases):
    labels, probs, ids = cases
    variant = probs.copy()
    rng = np.random.default_rng(5)
    mel = L.TASK_SLICES["DIAG"].start + L.class_index("DIAG", "MEL")
    variant[:, mel] = rng.permutation(variant[:, mel])           # DIAG MEL scores destroyed: ~35-point drop
    result = judge(probs, variant, labels, ids, GateSettings(max_auc_drop=1.0, resamples=500))
    mel_row = result["auc"]["categories"]["DIAG MEL"]
    assert mel_row["status"] == "fail" and mel_row["ci_points"][0] > 0 and mel_row["drop_points"] > 2
    assert result["verdict"] == "fail" and any(r.startswith("DIAG MEL drops") for r in result["reasons"])
    # The same damage to a category with 6 positives: reported, not gated.
    rare_labels = labels.copy()
    rare_labels[:, 0] = np.where(rare_labels[:, 0] == 2, 1, rare_labels[:, 0])
    rare_labels[:6, 0] = 2
    rare = auc_comparison(probs, variant, rare_labels, GateSettings(resamples=300))["categories"]["DIAG MEL"]
    assert rare["positives"] == 6 and rare["status"] == "not gated"


def test_the_averaged_bound_decides_and_the_verdict_is_reproducible(cases):
    labels, probs, ids = cases
    noisy = probs + np.random.default_rng(1).normal(0, 0.08, probs.shape)
    a = judge(probs, noisy, labels, ids, GateSettings(max_auc_drop=1.0, resamples=400, seed=7))
    b = judge(probs, noisy, labels, ids, GateSettings(max_auc_drop=1.0, resamples=400, seed=7))
    c = judge(probs, noisy, labels, ids, GateSettings(max_auc_drop=1.0, resamples=400, seed=8))
    assert a == b and a["auc"]["ci_points"] != c["auc"]["ci_points"]
    upper = a["auc"]["upper_bound_points"]
    assert upper > a["auc"]["drop_points"]
    assert judge(probs, noisy, labels, ids, GateSettings(max_auc_drop=upper + 0.01, resamples=400, seed=7))["auc"][
        "within_margin"]
    assert not judge(probs, noisy, labels, ids, GateSettings(max_auc_drop=upper - 0.01, resamples=400, seed=7))["auc"][
        "within_margin"]


def test_bootstrap_interval_agrees_with_scipy_when_unstratified(cases):
    from scipy.stats import bootstrap
    labels, probs, _ = cases
    noisy = probs + np.random.default_rng(2).normal(0, 0.08, probs.shape)
    positive, column = labels[:, 0] == 1, L.TASK_SLICES["DIAG"].start + 1
    counts = bootstrap_counts(np.zeros(N, int), 4000, seed=0)       # one stratum: plain paired bootstrap
    ours = 100 * (weighted_aucs(positive, probs[:, column], counts) - weighted_aucs(positive, noisy[:, column], counts))

    def drop(index):
        index = index.astype(int)
        return 100 * (roc_auc(positive[index], probs[index, column]) - roc_auc(positive[index], noisy[index, column]))
    theirs = bootstrap((np.arange(N),), drop, vectorized=False, n_resamples=4000, method="percentile",
                       random_state=0).confidence_interval
    low, high = np.percentile(ours, [2.5, 97.5])
    assert low == pytest.approx(theirs.low, abs=0.35) and high == pytest.approx(theirs.high, abs=0.35)


def test_decision_flips_name_cases_and_direction():
    labels = np.zeros((4, 8), int)
    labels[:, 0] = [2, 1, 1, 3]                       # MEL, NEV, NEV, MISC
    labels[0, L.TASK_KEYS.index("PN")] = 2            # case 0 truly scores 2 + 2 = 4 (refer)
    labels[0, L.TASK_KEYS.index("BWV")] = 1

    def probs(diag, pn, bwv):
        out = np.zeros((4, L.TOTAL_CLASSES))
        for t, task in enumerate(L.TASK_KEYS):
            out[np.arange(4), L.TASK_SLICES[task].start] = 1.0         # ABS / first class by default
        out[:, 0:5] = 0
        out[np.arange(4), diag] = 1
        out[:, L.TASK_SLICES["PN"]] = np.eye(3)[pn]
        out[:, L.TASK_SLICES["BWV"]] = np.eye(2)[bwv]
        return out

    reference = probs(diag=[1, 1, 2, 3], pn=[2, 0, 0, 0], bwv=[0, 0, 0, 0])   # case 0 wrong (NEV), case 2 wrong
    variant = probs(diag=[2, 1, 1, 0], pn=[2, 0, 0, 0], bwv=[1, 0, 0, 0])     # fixes 0 and 2, breaks 3
    flips = decision_flips(reference, variant, labels, ["a", "b", "c", "d"])
    dx = flips["diagnosis"]
    assert dx["flips"] == 3 and dx["rate_percent"] == 75.0 and dx["toward_truth"] == 2 and dx["away_from_truth"] == 1
    assert [(f["case_id"], f["reference"], f["variant"], f["direction"]) for f in dx["flipped"]] == [
        ("a", "NEV", "MEL", "toward"), ("c", "MEL", "NEV", "toward"), ("d", "MISC", "BCC", "away")]
    sp = flips["seven_point"]          # case 0: reference scores 2 (no referral), variant 4 (refer), truth 4
    assert sp["flipped"] == [{"case_id": "a", "reference": "no referral", "variant": "refer", "truth": "refer",
                              "direction": "toward", "reference_margin": 1.0}]
    gated = judge(reference, variant, labels, ["a", "b", "c", "d"], GateSettings(resamples=100, max_flip_rate=50))
    assert any(r.startswith("diagnosis flips 75.0 %") for r in gated["reasons"]) and gated["verdict"] == "fail"


def test_flip_rates_carry_an_exact_upper_bound_and_a_net_direction():
    from scipy.stats import beta

    from edgederm.scoring.gate import binomial_upper_bound
    for events, trials in ((0, 121), (2, 121), (27, 395), (5, 8)):
        assert binomial_upper_bound(events, trials) == pytest.approx(beta.ppf(0.95, events + 1, trials - events),
                                                                     abs=1e-9)
    assert binomial_upper_bound(4, 4) == 1.0


def _with_diagnosis_flips(probs: np.ndarray, count: int) -> np.ndarray:
    """A copy whose top diagnosis differs from `probs` on the first `count` cases and nowhere else."""
    variant = probs.copy()
    diag = variant[:, L.TASK_SLICES["DIAG"]]          # a view: changes land in `variant`
    for i in range(count):
        top, runner_up = np.argsort(diag[i])[::-1][:2]
        diag[i, [top, runner_up]] = diag[i, [runner_up, top]]
    return variant


def test_the_default_gate_allows_two_percent_of_cases_flipped_and_not_one_more(cases):
    labels, probs, ids = cases                         # 300 cases: 6 flips are 2.0 %, 7 are 2.3 %
    assert GateSettings().max_flip_rate == 2.0
    at_limit = judge(probs, _with_diagnosis_flips(probs, 6), labels, ids, GateSettings(resamples=300))
    assert at_limit["flips"]["diagnosis"]["flips"] == 6 and not any("flips" in r for r in at_limit["reasons"])
    over = judge(probs, _with_diagnosis_flips(probs, 7), labels, ids, GateSettings(resamples=300))
    assert over["verdict"] == "fail" and "diagnosis flips 2.3 % of cases > 2 %" in over["reasons"]
    dx = over["flips"]["diagnosis"]
    assert dx["upper_bound_percent"] > dx["rate_percent"] > 2
    assert dx["net_away_percent"] == pytest.approx(100 * (dx["away_from_truth"] - dx["toward_truth"]) / 300)
    low, high = dx["net_away_ci_percent"]
    assert low <= dx["net_away_percent"] <= high
    unlimited = judge(probs, _with_diagnosis_flips(probs, 7), labels, ids, GateSettings(resamples=300,
                                                                                        max_flip_rate=None))
    assert not any("flips" in r for r in unlimited["reasons"])


def test_losing_referred_melanomas_fails_the_gate(cases):
    labels, probs, ids = cases
    mel = labels[:, 0] == L.class_index("DIAG", "MEL")
    reference = probs.copy()
    for task, cls, _ in L.SEVEN_POINT_CRITERIA:        # the reference refers every case: all criteria present
        block = reference[:, L.TASK_SLICES[task]]
        block[:] = 0.0
        block[:, L.class_index(task, cls)] = 1.0
    variant = reference.copy()
    lost = np.flatnonzero(mel)[: int(mel.sum()) // 2]  # half the melanomas lose every criterion
    for task, cls, _ in L.SEVEN_POINT_CRITERIA:
        block = variant[:, L.TASK_SLICES[task]]
        block[lost, L.class_index(task, cls)] = 0.0
        block[lost, (L.class_index(task, cls) + 1) % block.shape[1]] = 1.0
    result = judge(reference, variant, labels, ids, GateSettings(resamples=300, max_flip_rate=100))
    sens = result["melanoma_sensitivity"]
    assert sens["reference_percent"] == 100.0 and sens["variant_percent"] == pytest.approx(100 * (1 - len(lost) / mel.sum()))
    assert sens["significant"] and sens["ci_points"][0] > 0
    assert result["verdict"] == "fail" and any("fewer melanomas" in r for r in result["reasons"])
    same = judge(reference, reference.copy(), labels, ids, GateSettings(resamples=300))
    assert same["melanoma_sensitivity"]["loss_points"] == 0 and not same["melanoma_sensitivity"]["significant"]


def test_a_fitted_model_is_judged_by_its_own_reading(cases):
    """With the model's clinical fit, the seven-point decisions are the expected score at its threshold,
    as the device reads them; a shift the checklist cannot see (no top class changes) is a flip there."""
    from edgederm.scoring.calibration import expected_seven_point_score
    from edgederm.scoring.gate import referral
    labels, probs, ids = cases
    fit = {"temperatures": {t: 1.0 for t in L.TASK_KEYS}, "target_sensitivity": 0.9,
           "seven_point": {"reading": "expected", "threshold": float(np.median(expected_seven_point_score(probs)))}}
    np.testing.assert_array_equal(referral(probs, fit) == "refer",
                                  expected_seven_point_score(probs) >= fit["seven_point"]["threshold"])
    # lower every criterion's probability a little, keeping each task's top class
    variant = probs.copy()
    for task, cls, _ in L.SEVEN_POINT_CRITERIA:
        block = variant[:, L.TASK_SLICES[task]]
        c = L.class_index(task, cls)
        top = block.argmax(1) == c
        move = np.where(top, 0.0, block[:, c] * 0.5)            # never demote a top class
        block[:, c] -= move
        block[:, (c + 1) % block.shape[1]] += move
    plain = judge(probs, variant, labels, ids, GateSettings(resamples=200))
    fitted = judge(probs, variant, labels, ids, GateSettings(resamples=200), fit)
    assert plain["flips"]["seven_point"]["flips"] == 0 and plain["seven_point_reading"] == "checklist score >= 3"
    assert fitted["flips"]["seven_point"]["flips"] > 0
    assert fitted["seven_point_reading"].startswith("expected seven-point score >= ")


def _criteria_probs(rows: list[dict[str, list[float]]]) -> np.ndarray:
    """N x 24 probabilities: each task's first class certain unless `rows[i]` gives that task's vector."""
    out = np.zeros((len(rows), L.TOTAL_CLASSES))
    for i, given in enumerate(rows):
        for task in L.TASK_KEYS:
            out[i, L.TASK_SLICES[task]] = given.get(task, np.eye(L.TASK_BY_KEY[task].num_classes)[0])
    return out


def test_each_flip_carries_its_fp32_margin_and_confident_flips_are_counted():
    """Diagnosis: case a is a near-tie (0.46 / 0.44), b a clear call (0.80 / 0.10); both flip, one is confident.
    Seven-point (checklist): c refers only because of BWV, a near-tie (0.52 / 0.48) the variant turns over;
    d refers on PN atypical, won by 0.15, which the variant turns over: one confident reading flip."""
    near, clear = [0.06, 0.46, 0.44, 0.02, 0.02], [0.05, 0.80, 0.10, 0.03, 0.02]
    reference = _criteria_probs([
        {"DIAG": near}, {"DIAG": clear},
        {"PN": [0.40, 0.05, 0.55], "BWV": [0.48, 0.52]},             # 2 + 2 = 4: refer
        {"PN": [0.40, 0.05, 0.55], "STR": [0.1, 0.1, 0.8]}])          # 2 + 1 = 3: refer
    variant = _criteria_probs([
        {"DIAG": [0.06, 0.44, 0.46, 0.02, 0.02]}, {"DIAG": [0.05, 0.10, 0.80, 0.03, 0.02]},
        {"PN": [0.40, 0.05, 0.55], "BWV": [0.52, 0.48]},             # 2: no referral
        {"PN": [0.55, 0.05, 0.40], "STR": [0.1, 0.1, 0.8]}])          # 1: no referral
    labels = np.zeros((4, 8), int)
    flips = decision_flips(reference, variant, labels, ["a", "b", "c", "d"])
    dx, sp = flips["diagnosis"], flips["seven_point"]
    assert {f["case_id"]: f["reference_margin"] for f in dx["flipped"]} == {"a": pytest.approx(0.02),
                                                                           "b": pytest.approx(0.70)}
    assert dx["flips"] == 2 and dx["confident_flips"] == 1 and dx["confident_margin"] == CONFIDENT_MARGIN
    assert {f["case_id"]: f["reference_margin"] for f in sp["flipped"]} == {"c": pytest.approx(0.04),
                                                                           "d": pytest.approx(0.15)}
    assert sp["flips"] == 2 and sp["confident_flips"] == 1


def test_the_expected_reading_margin_is_the_probability_shift_that_crosses_its_threshold():
    reference = _criteria_probs([{"PN": [0.5, 0.0, 0.5]}, {"PN": [0.1, 0.0, 0.9]}])     # expected scores 1.0, 1.8
    clinical = {"temperatures": {}, "seven_point": {"reading": "expected", "threshold": 1.2}}
    np.testing.assert_allclose(reading_margins(reference, reference, clinical), [0.1, 0.3])   # |score - 1.2| / 2
