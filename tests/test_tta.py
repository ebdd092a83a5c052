"""Test-time augmentation built into a bundle (`export --tta`): the same probabilities as `evaluate` with the
same views, INT8 variants gated against the averaged FP32 model, and every runtime, bench and the clinic app
taking it without code of their own."""
import json

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from edgederm.cli import app
from edgederm.data.inputs import load_arrays
from edgederm.data.release import read_release
from edgederm.data.torch_dataset import PairDataset
from edgederm.evaluation.evaluate import evaluate_run
from edgederm.evaluation.predict import predict_branches
from edgederm.scoring.weighted_average import weighted_final
from edgederm.models.io import load_model
from edgederm.models.tta import VIEW_SETS, tta_probabilities
from edgederm.runtime import load_bundle
from edgederm.runtime.bundle import read_manifest
from edgederm.scoring.calibration import stored_calibration
from edgederm.scoring.gate import GateSettings, judge

WIDE = {"max_auc_drop": 50.0, "max_flip_rate": 100.0}     # 8 valid cases (see conftest.bundles)


@pytest.fixture(scope="module")
def tta_bundles(trained_run, synthetic_release, tmp_path_factory) -> dict[str, object]:
    from edgederm.export.exporter import ExportRequest, export_many
    out = tmp_path_factory.mktemp("tta-exports")
    written = export_many([ExportRequest(run=trained_run, target=target, precisions=precision, data=synthetic_release,
                                         out=out, tta="flip", qat=False, **(WIDE if precision == "int8" else {}))
                           for target, precision in (("onnx", "fp32"), ("openvino", "int8"), ("jetson", "int8"))],
                          log=lambda m: None)
    return {path.name.split("-")[1]: path for path in written}


def test_one_call_of_stacked_views_is_the_mean_of_the_views():
    from dataclasses import replace

    from edgederm.models import create_model
    from edgederm.presets import get_preset
    torch.manual_seed(0)
    model = create_model(replace(get_preset("tiny").model, img_size=64)).eval()
    x, y = torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        averaged = tta_probabilities(model, (x, y), VIEW_SETS["flip4"])
        one_by_one = sum(model.fused_probabilities(torch.flip(x, d), torch.flip(y, d)) if d else
                         model.fused_probabilities(x, y) for d in ([], [3], [2], [2, 3])) / 4
    torch.testing.assert_close(averaged, one_by_one, atol=1e-6, rtol=0)
    assert torch.allclose(averaged.reshape(3, -1)[:, :5].sum(1), torch.ones(3))     # DIAG still a distribution


def test_the_exported_views_give_what_evaluate_gives_for_them(tta_bundles, trained_run, synthetic_release):
    cases = read_release(synthetic_release).split("test")
    model = load_model(trained_run / "model.safetensors")
    loader = DataLoader(PairDataset.for_model(cases, model.cfg, cache=False), batch_size=32)
    branch_probs, labels = predict_branches(model, loader, tta="flip")
    evaluated = weighted_final(branch_probs, model.branch_weights.tolist())
    predictor = load_bundle(tta_bundles["onnx"])
    exported = predictor.run_batched(*load_arrays(cases, predictor.preprocess, model.input_names))
    np.testing.assert_allclose(exported, evaluated, atol=2e-5, rtol=0)
    # the bundle's FP32 reference is the TTA model itself: its figures are evaluate's with those views
    result = CliRunner().invoke(app, ["evaluate", "--run", str(trained_run), "--data", str(synthetic_release),
                                      "--split", "test", "--tta-views", "flip"])
    assert result.exit_code == 0, result.output
    report = json.loads((trained_run / "eval-test-tta-flip" / "metrics.json").read_text())
    assert "TTA: 2 views (identity, hflip)" in (trained_run / "eval-test-tta-flip" / "metrics.md").read_text()
    manifest = read_manifest(tta_bundles["onnx"])
    assert report["tta"] == ["identity", "hflip"] and report["branch_weights_searched_on"] == "single view"
    assert manifest["source"]["reference_metrics"]["avg_auc"] == pytest.approx(report["branches"]["final"]["avg_auc"])
    plain = evaluate_run(trained_run, synthetic_release, split="test")
    assert not np.isclose(plain["branches"]["final"]["avg_auc"], report["branches"]["final"]["avg_auc"])


def test_every_graph_averages_the_views_and_the_int8_ones_are_gated_against_them(tta_bundles, trained_run,
                                                                                synthetic_release):
    from edgederm.export.jetson_check import check_graph
    from edgederm.export.onnx_export import run_torch
    from edgederm.models.tta import NO_TTA
    from edgederm.scoring.gate import GateSettings, auc_comparison
    cases = read_release(synthetic_release).split("valid")
    labels = np.array([c.labels for c in cases])
    model = load_model(trained_run / "model.safetensors").eval()
    for name, path in tta_bundles.items():
        manifest = read_manifest(path)
        assert path.name.endswith("-tta-flip") and manifest["tta"]["views"] == ["identity", "hflip"], name
        assert manifest["calibration"]["fitted_with_tta"] == ["identity", "hflip"]
        predictor = load_bundle(path, backend="onnxruntime" if name == "jetson" else None)
        arrays = load_arrays(cases, predictor.preprocess, predictor.input_names)
        # The views {x, mirrored x} of a mirrored photo are the same two views: the graph, quantized or not,
        # answers the same. A graph without the views built in would not.
        mirrored = tuple(np.ascontiguousarray(a[..., ::-1]) for a in arrays)
        np.testing.assert_allclose(predictor.run_batched(*mirrored), predictor.run_batched(*arrays), atol=1e-5)
        if manifest["precision"] == "int8":
            gate = manifest["int8_gate"]
            chosen = gate["attempts"][gate["chosen"]]
            assert chosen["verdict"] == "pass"
            # Gated against the TTA FP32 model on valid: the AUC drop it recorded is the shipped graph's against
            # the views' averaged FP32 probabilities, and not against the single-view model's.
            shipped = predictor.run_batched(*arrays)
            averaged, single = (run_torch(model, *arrays, views=views) for views in (VIEW_SETS["flip"], NO_TTA))
            drop = {name: auc_comparison(reference, shipped, labels, GateSettings(resamples=10))["drop_points"]
                    for name, reference in (("averaged", averaged), ("single", single))}
            assert chosen["auc_drop_points"] == pytest.approx(drop["averaged"], abs=1e-9), name
            assert abs(drop["averaged"] - drop["single"]) > 1e-6, name      # else this check could not tell
    jetson = tta_bundles["jetson"]
    assert all(check_graph(jetson / g) == [] for g in read_manifest(jetson)["graphs"])


def test_diagnose_bench_and_the_clinic_app_take_a_tta_bundle(tta_bundles, bundles, synthetic_release, tmp_path):
    from edgederm.benchmarks.bench import run_bench
    from edgederm.serve.app import create_app
    from edgederm.serve.server import build_clinic
    case = read_release(synthetic_release).split("test")[0]
    # the photos as PNG files, as they are and mirrored: diagnose gives one answer for both
    answers = []
    for name, flip in (("as-is", lambda a: a), ("mirrored", lambda a: a[:, ::-1])):
        paths = []
        for photo in (case.clinical, case.derm):
            path = tmp_path / f"{name}-{photo.stem}.png"
            assert cv2.imwrite(str(path), np.ascontiguousarray(flip(cv2.imread(str(photo)))))
            paths.append(path)
        result = CliRunner().invoke(app, ["diagnose", "--bundle", str(tta_bundles["openvino"]), "--clinical",
                                          str(paths[0]), "--derm", str(paths[1]), "--json"])
        assert result.exit_code == 0, result.output
        answers.append(json.loads(result.output))
    assert answers[0]["calibrated"] and answers[0]["diagnosis"].keys() == answers[1]["diagnosis"].keys()
    for label, p in answers[0]["diagnosis"].items():
        assert p == pytest.approx(answers[1]["diagnosis"][label], abs=1e-4)
    # bench pairs like with like: the TTA INT8 bundle is gated against the FP32 bundle of its own views, read at
    # that bundle's refitted thresholds, under the gate's default limits
    plain_ref, tta_fp32, tta_int8 = bundles["onnx-fp32"], tta_bundles["onnx"], tta_bundles["openvino"]
    report = run_bench([str(plain_ref), str(tta_fp32), str(tta_int8)], reference=str(plain_ref), data=synthetic_release,
                       split="test", batch_sizes=[1], warmup=1, runs=3, gate=GateSettings(), photos=[], e2e_runs=1)
    rows = {r["name"]: r for r in report["variants"]}
    assert rows[tta_fp32.name]["verdict"] == "reference" and rows[tta_int8.name]["gated_against"] == tta_fp32.name
    cost = rows[tta_fp32.name]["tta_latency_cost"]
    assert cost["views"] == 2 and cost["versus"] == plain_ref.name and cost["ratio"] > 0
    assert rows[tta_fp32.name]["tta"] == ["identity", "hflip"]
    # its clinic figures are read with its own thresholds, refitted on the TTA outputs
    own = read_manifest(tta_fp32)["calibration"]["seven_point"]["threshold"]
    assert rows[tta_fp32.name]["calibration"]["operating_point"]["threshold"] == own
    plain = read_manifest(plain_ref)["calibration"]["seven_point"]["threshold"]
    assert own != plain          # the refit moved it (else this test could not tell which fit bench read with)
    assert rows[plain_ref.name]["calibration"]["operating_point"]["threshold"] == plain
    # the mixed comparison bench no longer makes: the same INT8 outputs judged against the plain reference, at its
    # thresholds, charge the views' own changes to quantization
    cases = read_release(synthetic_release).split("test")
    labels, ids = np.array([c.labels for c in cases]), [c.case_id for c in cases]

    def probabilities(path):
        predictor = load_bundle(path)
        return predictor.run_batched(*load_arrays(cases, predictor.preprocess, predictor.input_names))

    def judged(reference, variant):
        return judge(outputs[reference], outputs[variant], labels, ids, GateSettings(),
                     stored_calibration(read_manifest(reference)))

    outputs = {path: probabilities(path) for path in (plain_ref, tta_fp32, tta_int8)}
    like, mixed, views_alone = judged(tta_fp32, tta_int8), judged(plain_ref, tta_int8), judged(plain_ref, tta_fp32)
    assert rows[tta_int8.name]["gate"]["flips"] == like["flips"] and rows[tta_int8.name]["verdict"] == like["verdict"]
    # FP32 against FP32, the views alone change decisions (else this test could not tell the pairings apart), and
    # that is what the plain reference counted against the INT8 bundle: it fails there
    assert views_alone["flips"]["seven_point"]["flips"] + views_alone["flips"]["diagnosis"]["flips"] > 0
    assert mixed["verdict"] == "fail" and mixed["flips"] != like["flips"]
    # without the like reference in the bench, the TTA INT8 row is not compared at all, and the report says why
    alone = run_bench([str(plain_ref), str(tta_int8)], reference=str(plain_ref), data=synthetic_release, split="test",
                      batch_sizes=[1], warmup=1, runs=2, gate=GateSettings(), photos=[], e2e_runs=1)
    row = alone["variants"][-1]
    assert row["verdict"] == "not comparable" and "gate" not in row and not alone["gate_passed"]
    assert "TTA views identity, hflip" in row["not_comparable"] and "--tta" in row["not_comparable"]
    clinic, _ = build_clinic(tta_bundles["onnx"], tmp_path / "clinic")
    with TestClient(create_app(clinic), base_url="http://127.0.0.1:8000") as client:
        files = {"clinical": ("c.jpg", case.clinical.read_bytes(), "image/jpeg"),
                 "derm": ("d.jpg", case.derm.read_bytes(), "image/jpeg")}
        posted = client.post("/api/cases", files=files)
    clinic.store.close()
    assert posted.status_code == 201, posted.text
    assert posted.json()["bundle"]["name"] == tta_bundles["onnx"].name


@pytest.mark.parametrize("args, message", [
    (["--target", "torch", "--tta", "flip"], "a torch bundle holds weights, not a graph"),
    (["--target", "onnx", "--tta", "six"], "--tta 'six': not one of flip, flip4"),
])
def test_tta_a_bundle_cannot_take_is_one_line_and_leaves_nothing(trained_run, synthetic_release, tmp_path, args,
                                                                 message):
    out = tmp_path / "exports"
    result = CliRunner().invoke(app, ["export", "--run", str(trained_run), "--data", str(synthetic_release),
                                      "--out", str(out), *args])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not out.exists() or not any(out.iterdir())
    no_data = CliRunner().invoke(app, ["export", "--run", str(trained_run), "--out", str(out), "--target", "onnx",
                                       "--tta", "flip"])
    assert no_data.exit_code != 0 and "--tta needs --data" in no_data.output
