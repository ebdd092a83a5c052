"""Calibration (ECE, temperature scaling) and melanoma operating points
(edgederm.scoring.calibration), on data whose answers are known; and runs and bundles that stored the fit
under its old name."""
from pathlib import Path

import numpy as np
import pytest

from edgederm import labels as L
from edgederm.scoring.calibration import (apply_temperatures, argmax_seven_point_score, calibration_report,
                                          describe_operating_point, expected_calibration_error,
                                          expected_seven_point_score, fit_calibration, fit_temperature, operating_point,
                                          temperature_scale, threshold_for_sensitivity)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _overconfident(n, k, sharpen, seed):
    """Labels drawn from softmax(z); the model reports softmax(z * sharpen): overconfident by `sharpen`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    true = _softmax(z)
    labels = np.array([rng.choice(k, p=p) for p in true])
    return _softmax(z * sharpen), labels


def test_ece_by_hand():
    probs = np.array([[0.8, 0.2]] * 4 + [[0.3, 0.7]] * 2)
    labels = np.array([0, 0, 0, 1, 1, 0])
    ece, bins = expected_calibration_error(probs, labels)
    # bin of 0.8: 3 of 4 right (|0.75 - 0.8|), bin of 0.7: 1 of 2 right (|0.5 - 0.7|)
    assert ece == pytest.approx(4 / 6 * 0.05 + 2 / 6 * 0.2)
    assert [(b["cases"], b["accuracy"]) for b in bins] == [(2, 0.5), (4, 0.75)]


def test_temperature_undoes_overconfidence_and_keeps_the_top_class():
    probs, labels = _overconfident(4000, 3, sharpen=3.0, seed=0)
    temperature = fit_temperature(probs, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    scaled = temperature_scale(probs, temperature)
    assert (scaled.argmax(1) == probs.argmax(1)).all()
    np.testing.assert_allclose(scaled.sum(1), 1, atol=1e-9)
    np.testing.assert_allclose(temperature_scale(probs, 1.0), probs, atol=1e-9)
    assert expected_calibration_error(scaled, labels)[0] < expected_calibration_error(probs, labels)[0] / 3


def test_threshold_is_the_highest_that_keeps_the_target_sensitivity():
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    positive = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0], bool)     # 9 positives
    threshold = threshold_for_sensitivity(scores, positive, 0.9)             # 9 x 0.9 = 8.1 -> 9 referred
    assert threshold == pytest.approx((0.1 + 0.05) / 2)                     # halfway to the next case below
    assert operating_point(scores, positive, threshold)["sensitivity"] == 1.0
    assert threshold_for_sensitivity(scores, positive, 0.85) == pytest.approx(0.15)   # 7.65 -> 8 of 9
    assert threshold_for_sensitivity(scores[:1], positive[:1], 0.9) == 0.95  # nothing below: the score itself
    point = operating_point(scores, positive, 0.15)
    assert point["sensitivity"] == pytest.approx(8 / 9) and point["specificity"] == pytest.approx(1 / 3)
    assert point["referred_percent"] == pytest.approx(100 * 10 / 12)


def _one_hot_case(classes: dict[str, str]) -> np.ndarray:
    row = np.zeros(L.TOTAL_CLASSES)
    for task in L.TASKS:
        row[L.TASK_SLICES[task.key].start + task.classes.index(classes.get(task.key, task.classes[0]))] = 1
    return row


def test_expected_score_is_the_checklist_on_certain_predictions_and_counts_rare_criteria():
    certain = np.stack([_one_hot_case({"PN": "ATP", "VS": "IR"}), _one_hot_case({})])
    np.testing.assert_array_equal(expected_seven_point_score(certain), argmax_seven_point_score(certain))
    assert argmax_seven_point_score(certain)[0] == 2 + 2          # atypical network and irregular vessels: major
    # VS IR at 40 %: never the top class, so the checklist never counts it; the expected score counts 0.4 x 2
    unsure = _one_hot_case({})
    vs = L.TASK_SLICES["VS"]
    unsure[vs] = 0
    unsure[vs.start + L.class_index("VS", "IR")] = 0.4
    unsure[vs.start + L.class_index("VS", "ABS")] = 0.6
    assert argmax_seven_point_score(unsure[None])[0] == 0
    assert expected_seven_point_score(unsure[None])[0] == pytest.approx(0.8)


def test_fit_on_valid_then_report_on_another_split():
    tasks = []
    labels = []
    for t, task in enumerate(L.TASKS):
        probs, y = _overconfident(600, task.num_classes, sharpen=2.5, seed=10 + t)
        tasks.append(probs)
        labels.append(y)
    probs, labels = np.concatenate(tasks, 1), np.stack(labels, 1)
    valid, test = slice(0, 300), slice(300, 600)
    fit = fit_calibration(probs[valid], labels[valid], target=0.9)
    assert set(fit["temperatures"]) == set(L.TASK_KEYS) and all(t > 1.5 for t in fit["temperatures"].values())
    calibrated = apply_temperatures(probs[valid], fit["temperatures"])
    mel = labels[valid][:, L.TASK_KEYS.index("DIAG")] == L.class_index("DIAG", "MEL")
    mel_p = calibrated[:, L.TASK_SLICES["DIAG"]][:, L.class_index("DIAG", "MEL")]
    assert (mel_p[mel] >= fit["melanoma_probability_threshold"]).mean() >= 0.9      # the target holds on valid
    # the fit carries what its threshold gives on valid: the clinic's figure reports show for the model
    on_valid = fit["valid_operating_point"]
    assert on_valid == calibration_report(fit, probs[valid], labels[valid])["operating_point"]
    assert on_valid["sensitivity"] >= 0.9 and 0 < on_valid["specificity"] < 1
    report = calibration_report(fit, probs[test], labels[test])
    assert all(c["ece_calibrated"] < c["ece"] for c in report["tasks"].values())
    assert set(report["melanoma"]) == {"seven_point_argmax", "seven_point_expected", "melanoma_probability"}
    assert report["melanoma"]["seven_point_argmax"]["threshold"] == L.SEVEN_POINT_THRESHOLD
    point, expected = report["operating_point"], report["melanoma"]["seven_point_expected"]
    assert point["reading"] == "seven_point_expected" and point["threshold"] == fit["seven_point"]["threshold"]
    referred = 100 * (expected_seven_point_score(apply_temperatures(probs[test], fit["temperatures"]))
                      >= point["threshold"]).mean()
    assert point["referred_percent"] == pytest.approx(referred) and point["specificity"] == expected["specificity"]
    assert report["melanoma"]["melanoma_probability"]["positives"] == int(
        (labels[test][:, L.TASK_KEYS.index("DIAG")] == L.class_index("DIAG", "MEL")).sum())
    with pytest.raises(ValueError, match="target sensitivity"):
        fit_calibration(probs[valid], labels[valid], target=0)


def test_a_valid_split_without_melanoma_keeps_the_checklist():
    """No melanoma to choose a threshold on: temperatures only, the checklist's rule, no P(MEL) point."""
    probs, labels = _overconfident(200, 5, sharpen=2.0, seed=1)
    full = np.concatenate([probs] + [_overconfident(200, t.num_classes, 2.0, 20 + i)[0]
                                     for i, t in enumerate(L.TASKS[1:])], 1)
    labels = np.stack([np.where(labels == L.class_index("DIAG", "MEL"), 0, labels)]
                      + [np.zeros(200, int)] * (len(L.TASKS) - 1), 1)
    fit = fit_calibration(full, labels)
    assert fit["seven_point"] == {"reading": "checklist", "threshold": L.SEVEN_POINT_THRESHOLD}
    assert fit["melanoma_probability_threshold"] is None and len(fit["temperatures"]) == len(L.TASK_KEYS)
    report = calibration_report(fit, full, labels)
    assert set(report["melanoma"]) == {"seven_point_argmax"}
    assert report["operating_point"]["reading"] == "seven_point_argmax"
    assert "the checklist's >= 3" in describe_operating_point(report["operating_point"])


def test_runs_and_bundles_written_under_the_old_name_still_load(trained_run, bundles, synthetic_release, tmp_path):
    """The fit used to be called `clinical`: RUN/clinical.json, the weights' metadata key, the
    manifest key. Such a run still evaluates and exports with its fit, and such a bundle still reads with it."""
    import json
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    from edgederm.cli import app
    from edgederm.data.release import read_release
    from edgederm.runtime import load_bundle
    from edgederm.runtime.bundle import read_manifest, write_manifest
    fit = json.loads((trained_run / "calibration.json").read_text())

    old_run = Path(shutil.copytree(trained_run, tmp_path / "old-run", ignore=shutil.ignore_patterns("eval-*")))
    (old_run / "calibration.json").rename(old_run / "clinical.json")
    weights = old_run / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
    metadata["clinical"] = metadata.pop("calibration")
    save_file(load_file(str(weights)), str(weights), metadata=metadata)
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "--run", str(old_run), "--data", str(synthetic_release), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((old_run / "eval-test" / "metrics.json").read_text())
    assert report["calibration"]["fitted"] == "at training, on the valid split" and report["calibration"]["fit"] == fit
    result = runner.invoke(app, ["export", "--run", str(old_run), "--target", "onnx", "--precision", "fp32",
                                 "--out", str(tmp_path / "exports")])
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "exports" / "old-run-onnx-fp32")["calibration"] == fit

    # an INT8 bundle: there the old manifest's "calibration" was the INT8 calibration set
    new_bundle = bundles["openvino-int8"]
    old_bundle = Path(shutil.copytree(new_bundle, tmp_path / "old-bundle"))
    manifest = read_manifest(old_bundle)
    manifest["clinical"] = manifest.pop("calibration")
    manifest["calibration"] = manifest.pop("calibration_set")
    write_manifest(old_bundle, manifest)
    assert load_bundle(old_bundle).calibration == load_bundle(new_bundle).calibration == fit
    case = read_release(synthetic_release).split("test")[0]
    answers = [json.loads(runner.invoke(app, ["diagnose", "--bundle", str(b), "--clinical", str(case.clinical),
                                              "--derm", str(case.derm), "--json"]).output)
               for b in (old_bundle, new_bundle)]
    assert answers[0]["calibrated"] and answers[0]["tasks"] == answers[1]["tasks"]
    assert answers[0]["seven_point"] == answers[1]["seven_point"]
