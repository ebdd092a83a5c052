"""Metrics against hand-computed values, and `edgederm evaluate` on a trained run."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgederm import labels as L
from edgederm.cli import app
from edgederm.scoring.metrics import compute_metrics, roc_auc


def _perfect(labels):
    return np.concatenate([np.eye(k)[labels[:, t]] for t, k in enumerate(L.NUM_CLASSES)], 1)


def test_perfect_predictions_score_one_and_absent_categories_are_skipped():
    labels = np.array([[0, 0, 0, 0, 0, 0, 0, 0], [2, 2, 2, 2, 1, 2, 1, 2], [1, 1, 1, 1, 0, 1, 0, 1]])
    m = compute_metrics(_perfect(labels), labels)
    assert m["avg_auc"] == 1.0 and m["avg_acc"] == 1.0
    assert m["auc"]["DIAG MISC"] is None and m["auc"]["DIAG SK"] is None   # no positives in these 3 cases
    assert m["auc_categories_averaged"] == 15
    assert m["melanoma"]["DIAG MEL"] == {"precision": 1.0, "sensitivity": 1.0, "specificity": 1.0}


def test_metrics_match_hand_computation():
    labels = np.zeros((4, 8), dtype=int)
    labels[:, 0] = [2, 2, 1, 1]          # two melanomas, two nevi
    probs = _perfect(labels).astype(float)
    # Case 3 (a nevus) is called melanoma: DIAG accuracy 3/4, MEL precision 2/3, specificity 1/2.
    probs[2, 0:5] = [0, 0.2, 0.8, 0, 0]
    m = compute_metrics(probs, labels)
    assert m["acc"]["DIAG"] == 0.75
    assert m["melanoma"]["DIAG MEL"] == pytest.approx({"precision": 2 / 3, "sensitivity": 1.0, "specificity": 0.5})
    # MEL scores: melanomas 1, 1; nevi 0, 0.8 -> every melanoma outranks every nevus: AUC 1.
    assert m["auc"]["DIAG MEL"] == 1.0
    # NEV scores: nevi 1, 0.2; melanomas 0, 0 -> AUC 1 as well; the 0.2 still beats 0.
    assert m["auc"]["DIAG NEV"] == 1.0


def test_evaluate_command_writes_the_paper_tables(trained_run, synthetic_release):
    result = CliRunner().invoke(app, ["evaluate", "--run", str(trained_run), "--data", str(synthetic_release),
                                      "--split", "test", "--tta"])
    assert result.exit_code == 0, result.output
    report = json.loads((trained_run / "eval-test-tta" / "metrics.json").read_text())
    assert set(report["branches"]) == {"clinical", "derm", "fusion", "final"}
    assert report["tta"] and report["cases"] > 0
    md = (trained_run / "eval-test-tta" / "metrics.md").read_text()
    assert "| Weighted final (P_FI) |" in md and "| branch | DIAG BCC | DIAG NEV |" in md   # categories are columns
    # the paper's Table 3 order of the accuracies, and its Table 4: a row per metric, an AVG column
    assert "| branch | PN | BWV | VS | PIG | STR | DaG | RS | DIAG | AVG |" in md
    final_md = report["branches"]["final"]
    assert "| metric | DIAG MEL | PN ATP | STR IR | PIG IR | RS PRS | DaG IR | BWV PRS | VS IR | AVG |" in md
    sensitivity = [s["sensitivity"] for s in final_md["melanoma"].values()]
    sen_row = next(line for line in md.splitlines() if line.startswith("| SEN |"))
    assert sen_row.rstrip(" |").endswith(f"{100 * sum(sensitivity) / len(sensitivity):.1f}")
    auc_row = next(line for line in md.splitlines() if line.startswith("| AUC |"))
    assert f"| {100 * final_md['auc']['DIAG MEL']:.1f} |" in auc_row
    # calibration and melanoma operating points: with TTA, fitted now on valid's TTA outputs
    calibration = report["calibration"]
    assert calibration["fitted"] == "now, on the valid split's 6-view TTA outputs"
    assert set(calibration["tasks"]) == set(L.TASK_KEYS)
    assert "## Calibration and melanoma decisions, weighted final" in md
    mel = calibration["melanoma"]["melanoma_probability"]
    assert mel["threshold"] == calibration["fit"]["melanoma_probability_threshold"]
    assert (trained_run / "eval-test-tta" / "reliability.png").stat().st_size > 10_000
    # without TTA: training's own fit, stored with the weights and in calibration.json
    plain = CliRunner().invoke(app, ["evaluate", "--run", str(trained_run), "--data", str(synthetic_release),
                                     "--split", "test", "--json"])
    assert plain.exit_code == 0, plain.output
    stored = json.loads((trained_run / "calibration.json").read_text())
    plain = json.loads((trained_run / "eval-test" / "metrics.json").read_text())["calibration"]
    assert plain["fitted"] == "at training, on the valid split" and plain["fit"] == stored
    assert result.output.strip().splitlines()[-2].startswith("AVG AUC ")
    # the clinic's operating point: the expected score at training's valid-chosen threshold, on this split
    point = report["calibration"]["operating_point"]
    assert point["reading"] == "seven_point_expected" and point["target_sensitivity"] == 0.9
    assert point["specificity"] == calibration["melanoma"]["seven_point_expected"]["specificity"]
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("clinic operating point at the valid-chosen threshold for 90 % melanoma sensitivity")
    assert f"{point['referred_percent']:.1f} % of patients referred" in last and last[0].upper() + last[1:] in md
    final = report["branches"]["final"]
    assert f"AVG AUC {100 * final['avg_auc']:.1f}  AVG ACC {100 * final['avg_acc']:.1f}" in result.output


def test_evaluate_without_a_finished_run_is_one_line(tmp_path, synthetic_release):
    result = CliRunner().invoke(app, ["evaluate", "--run", str(tmp_path), "--data", str(synthetic_release)])
    assert result.exit_code == 1
    assert "model.safetensors: not found (has training finished?)" in result.output


def test_auc_and_melanoma_scores_equal_scikit_learn_with_ties():
    from sklearn.metrics import precision_score, recall_score, roc_auc_score
    rng = np.random.default_rng(4)
    for n in (7, 50, 400):
        positive = rng.random(n) < 0.3
        positive[:2] = [True, False]
        score = np.round(rng.random(n), 1)          # rounded: many tied scores
        assert roc_auc(positive, score) == pytest.approx(roc_auc_score(positive, score), abs=1e-12)
    labels = np.stack([rng.integers(0, k, 300) for k in L.NUM_CLASSES], 1)
    probs = np.concatenate([rng.dirichlet(np.ones(k), 300) for k in L.NUM_CLASSES], 1)
    m = compute_metrics(probs, labels)
    mel = L.class_index("DIAG", "MEL")
    truth, predicted = labels[:, 0] == mel, probs[:, 0:5].argmax(1) == mel
    assert m["auc"]["DIAG MEL"] == pytest.approx(roc_auc_score(truth, probs[:, mel]), abs=1e-12)
    assert m["melanoma"]["DIAG MEL"] == pytest.approx({
        "precision": precision_score(truth, predicted), "sensitivity": recall_score(truth, predicted),
        "specificity": recall_score(~truth, ~predicted)}, abs=1e-12)
