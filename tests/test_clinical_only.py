"""The clinical-only network (DermImitFormer-style, arXiv 2307.08308): one input, lesion selection, task
tokens, the body-location auxiliary task; then the whole pipeline on the CI-sized release with a one-input
bundle: train, evaluate, export (OpenVINO INT8 and the Jetson graphs, gated), diagnose and bench."""
import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from edgederm import labels as L
from edgederm.cli import app
from edgederm.data.release import read_release
from edgederm.data.torch_dataset import PairDataset
from edgederm.errors import ConfigError, EdgeDermError, LabelError
from edgederm.models import create_model
from edgederm.models.clinical_only import LesionSelection
from edgederm.models.config import ModelConfig
from edgederm.models.io import load_model, save_weights
from edgederm.presets import resolve_config
from tests.helpers import bench_against_torch, export_for_devices, read_meta, write_meta

runner = CliRunner()


def _small() -> ModelConfig:
    # mobilenetv3_small_050's last stage at 128 px is 4 x 4 = 16 patches, of which 12 are kept
    return resolve_config("clinical-only-tiny")[0]


def test_one_input_the_eight_tasks_and_body_location(tmp_path):
    model = create_model(_small()).eval()
    assert model.input_names == ("clinical",) and model.branches == ("clinical",) and not hasattr(model, "derm_encoder")
    x = torch.randn(3, 3, 128, 128)
    out = model(x)
    assert out["clinical"].shape == (3, L.TOTAL_CLASSES) and out["location"].shape == (3, 9)
    probs = model.fused_probabilities(x)
    for s in L.TASK_SLICES.values():                   # P_FI is the one branch's per-task softmax
        torch.testing.assert_close(probs[:, s].sum(1), torch.ones(3))
    save_weights(model, tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors").eval()
    assert torch.equal(again.fused_probabilities(x), probs)
    with pytest.raises(ConfigError, match="branch weights must be 1 non-negative"):
        model.set_branch_weights(0.5, 0.5, 0.0)


def test_lesion_selection_keeps_the_patches_the_queries_attend_to():
    select = LesionSelection(channels=4, width=4, queries=1, keep=2).eval()
    with torch.no_grad():
        select.project.weight.copy_(torch.eye(4))
        select.project.bias.zero_()
        select.queries.copy_(torch.tensor([[0.0, 0.0, 0.0, 10.0]]))
    stage = torch.zeros(1, 4, 3, 3)
    stage[0, :, 0, 0] = torch.tensor([0.0, 0.0, -1.0, 1.0])       # patches 0 and 5 answer the query
    stage[0, :, 1, 2] = torch.tensor([0.0, 0.0, -1.0, 1.0])
    stage[0, :, 2, 1] = torch.tensor([1.0, -1.0, 0.0, 0.0])       # a strong patch the query ignores
    kept, local = select(stage)
    tokens = select.norm(select.project(stage.flatten(2).transpose(1, 2)))[0]
    assert kept.shape == (1, 2, 4)
    assert torch.allclose(kept[0], tokens[[0, 5]]) or torch.allclose(kept[0], tokens[[5, 0]])
    assert torch.allclose(local[0], tokens[[0, 5]].mean(0), atol=1e-6)   # equal scores: equal weights


def test_more_patches_than_the_last_stage_has_is_refused():
    with pytest.raises(ConfigError, match="selected_patches 17 is more than the 16 patches"):
        create_model(ModelConfig(**{**_small().to_dict(), "selected_patches": 17, "fusion_stages": (-2, -1)}))
    with pytest.raises(ConfigError, match="a clinical-only model has one encoder"):
        ModelConfig(architecture="clinical-only", clinical_encoder="mobilenetv3_small_050", derm_encoder="resnet10t")


def test_an_unknown_body_location_is_refused_before_training(release_copy):
    rows = read_meta(release_copy)
    rows[0]["location"] = "elbow"
    write_meta(release_copy, rows)
    cases = read_release(release_copy).split("train") + read_release(release_copy).split("valid")
    with pytest.raises(ConfigError, match=r"location: unknown value 'elbow' \(allowed: abdomen, acral"):
        PairDataset.for_model(cases + read_release(release_copy).split("test"), _small())
    with pytest.raises(LabelError, match="location: missing"):
        L.metadata_index({"sex": "male"}, "location")
    # a two-photo model does not read the column
    assert len(PairDataset.for_model(cases, resolve_config("tiny")[0])) == len(cases)


def test_clinical_only_trains_evaluates_exports_and_diagnoses(clinical_only_run, synthetic_release, tmp_path):
    from edgederm.evaluation.evaluate import evaluate_run
    from edgederm.runtime import load_bundle
    from edgederm.runtime.bundle import read_manifest
    from edgederm.serve.server import build_clinic

    assert json.loads((clinical_only_run / "branch_weights.json").read_text())["clinical"] == 1.0
    report = evaluate_run(clinical_only_run, synthetic_release)
    assert set(report["branches"]) == {"clinical", "final"}
    assert report["location"]["cases"] == report["cases"] and 0.0 <= report["location"]["acc"] <= 1.0
    assert len(report["branches"]["final"]["auc"]) == len(L.AUC_CATEGORIES)       # location is not one of them

    written = export_for_devices(clinical_only_run, synthetic_release, tmp_path)
    for target, path in written.items():
        assert [i["name"] for i in read_manifest(path)["inputs"]] == ["clinical"], target

    case = read_release(synthetic_release).split("test")[0]
    ok = runner.invoke(app, ["diagnose", "--bundle", str(written["openvino"]), "--clinical", str(case.clinical), "--json"])
    assert ok.exit_code == 0, ok.output
    assert set(json.loads(ok.output)["tasks"]) == set(L.TASK_KEYS)
    both = runner.invoke(app, ["diagnose", "--bundle", str(written["openvino"]), "--clinical", str(case.clinical),
                               "--derm", str(case.derm)])
    assert both.exit_code != 0 and "--derm is not one of its inputs" in " ".join(both.output.replace("│", " ").split())
    # the model sees the clinical photo only: the same answer whatever dermoscopy photo exists
    predictor = load_bundle(written["openvino"])
    with pytest.raises(EdgeDermError, match=r"takes 1 photos per case \(clinical\), got 2"):
        predictor.predict(case.clinical, case.derm)

    table = tmp_path / "cases.csv"
    table.write_text(f"id,clinical\na,{case.clinical}\n")
    out = tmp_path / "results.csv"
    result = runner.invoke(app, ["diagnose", "--bundle", str(written["jetson"]), "--backend", "onnxruntime",
                                 "--pairs", str(table), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["status"] == "ok" and rows[0]["derm"] == "" and rows[0]["diagnosis"] in L.TASKS[0].classes

    bench_against_torch(written, synthetic_release, report)

    with pytest.raises(EdgeDermError, match="the clinic app takes two-photo bundles; this one takes clinical"):
        build_clinic(written["openvino"], tmp_path / "clinic")
