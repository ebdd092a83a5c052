"""The image + patient-metadata network (JIF-MMFA, arXiv 2312.04189): three inputs (two photos and the
14-value one-hot of sex, body location and elevation), image / metadata / joint branches, fusion attention;
then the whole pipeline on the CI-sized release with a three-input bundle: train, evaluate, export (OpenVINO
INT8 and the Jetson graphs, gated), diagnose with --sex/--location/--elevation and a CSV, and bench."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgederm import labels as L
from edgederm.cli import app
from edgederm.data.inputs import input_shape, load_arrays
from edgederm.data.release import read_release
from edgederm.data.torch_dataset import PairDataset
from edgederm.errors import ConfigError, EdgeDermError, LabelError
from edgederm.runtime.engine import build_engine
from edgederm.models import create_model
from edgederm.models.config import ModelConfig
from edgederm.models.io import load_model, save_weights
from edgederm.training.loss import multitask_loss
from edgederm.presets import resolve_config
from tests.helpers import (FACTS, FakeBuilderTrt, bench_against_torch, export_for_devices, read_meta,
                           write_meta)

runner = CliRunner()
PATIENT = {"sex": "female", "location": "back", "elevation": "palpable"}


def _small() -> ModelConfig:
    return resolve_config("jif-mmfa-tiny", model_overrides={"img_size": 64})[0]


def _inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    metadata = torch.zeros(n, L.METADATA_SIZE)
    metadata[:, [0, 2 + 3, 11]] = 1.0      # female, back, flat
    return torch.randn(n, 3, 64, 64, generator=g), torch.randn(n, 3, 64, 64, generator=g), metadata


def test_three_inputs_three_branches_and_the_metadata_is_read(tmp_path):
    model = create_model(_small()).eval()
    assert model.input_names == ("clinical", "dermoscopy", "metadata")
    assert model.branches == ("image", "metadata", "fusion")
    clinical, derm, metadata = _inputs(3)
    out = model(clinical, derm, metadata)
    assert {k: v.shape for k, v in out.items()} == {b: (3, L.TOTAL_CLASSES) for b in model.branches}
    probs = model.fused_probabilities(clinical, derm, metadata)
    for s in L.TASK_SLICES.values():
        torch.testing.assert_close(probs[:, s].sum(1), torch.ones(3))
    # another patient, same photos: the metadata and joint branches answer differently, the image branch not
    other = torch.zeros_like(metadata)
    other[:, [1, 2 + 6, 13]] = 1.0         # male, head neck, nodular
    again = model(clinical, derm, other)
    assert torch.equal(again["image"], out["image"])
    assert not torch.allclose(again["metadata"], out["metadata"]) and not torch.allclose(again["fusion"], out["fusion"])
    save_weights(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors").eval()
    assert torch.equal(loaded.fused_probabilities(clinical, derm, metadata), probs)
    assert input_shape("metadata", 64) == (L.METADATA_SIZE,) and input_shape("clinical", 64) == (3, 64, 64)


def test_the_loss_halves_the_individual_branches():
    _, recipe = resolve_config("jif-mmfa-tiny")
    assert (recipe.loss_weight_image, recipe.loss_weight_metadata, recipe.loss_weight_fusion) == (0.5, 0.5, 1.0)
    model = create_model(_small())
    out = model(*_inputs(4))
    targets = torch.zeros(4, L.NUM_TASKS, dtype=torch.long)
    each = {b: multitask_loss({b: out[b]}, targets) for b in model.branches}
    total = multitask_loss(out, targets, branch_weights={"image": 0.5, "metadata": 0.5, "fusion": 1.0})
    torch.testing.assert_close(total, each["fusion"] + 0.5 * (each["image"] + each["metadata"]))


def test_metadata_is_one_hot_from_the_release_and_an_unknown_value_is_refused(release_copy):
    release = read_release(release_copy)
    cases = release.split("valid")
    _, _, metadata = load_arrays(cases, _small().preprocess(), ("clinical", "dermoscopy", "metadata"))
    assert metadata.shape == (len(cases), L.METADATA_SIZE) and metadata.dtype == np.float32
    np.testing.assert_array_equal(metadata.sum(1), np.full(len(cases), 3.0))     # one value per field
    first = cases[0].metadata
    assert metadata[0][L.METADATA_FIELDS["sex"].index(first["sex"])] == 1.0
    item = PairDataset.for_model(cases, _small())[0]
    assert len(item) == 4 and torch.equal(item[2], torch.from_numpy(metadata[0]))

    rows = read_meta(release_copy)
    row = release.splits["train"][0]
    rows[row]["elevation"] = "raised"
    write_meta(release_copy, rows)
    bad = read_release(release_copy).split("train")
    with pytest.raises(LabelError, match=r"case .* \(meta.csv row \d+.*\): elevation: unknown value 'raised' "
                                         r"\(allowed: flat, palpable, nodular\)"):
        PairDataset.for_model(bad, _small())
    assert len(PairDataset.for_model(bad, resolve_config("tiny")[0])) == len(bad)   # a photo model ignores it
    with pytest.raises(ConfigError, match="a jif-mmfa model has an encoder per photo"):
        ModelConfig(architecture="jif-mmfa", clinical_encoder="resnet10t", derm_encoder="resnet10t",
                    shared_encoder=True)


def _words(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def test_jif_mmfa_trains_evaluates_exports_and_diagnoses(jif_run, synthetic_release, tmp_path):
    from edgederm.evaluation.evaluate import evaluate_run
    from edgederm.evaluation.report import write_report
    from edgederm.runtime import load_bundle
    from edgederm.runtime.bundle import read_manifest
    from edgederm.serve.server import build_clinic

    weights = json.loads((jif_run / "branch_weights.json").read_text())
    assert abs(weights["image"] + weights["metadata"] + weights["fusion"] - 1.0) < 1e-6
    report = evaluate_run(jif_run, synthetic_release)
    assert set(report["branches"]) == {"image", "metadata", "fusion", "final"}
    _, table_md = write_report(report, tmp_path / "eval")
    text = table_md.read_text()
    assert "| Image (P_I) |" in text and "| Metadata (P_M) |" in text and "W_I " in text and "W_M " in text

    written = export_for_devices(jif_run, synthetic_release, tmp_path)
    for target, path in written.items():
        assert [(i["name"], i["shape"]) for i in read_manifest(path)["inputs"]] == [
            ("clinical", ["batch", 3, 64, 64]), ("dermoscopy", ["batch", 3, 64, 64]),
            ("metadata", ["batch", L.METADATA_SIZE])], target
    # the Jetson bundle's build instructions and `edgederm engine build` take the metadata's shape from the
    # manifest (TensorRT itself is faked here: no NVIDIA GPU)
    assert "metadata:1x14" in (written["jetson"] / "README.md").read_text()
    engine_copy = shutil.copytree(written["jetson"], tmp_path / "engine")
    fake, lines = FakeBuilderTrt(), []
    build_engine(engine_copy, trt=fake, facts=FACTS, log=lines.append)
    assert [sorted(p) for p in fake.profiles] == [["clinical", "dermoscopy", "metadata"]] * 2
    assert any("--maxShapes=clinical:8x3x64x64,dermoscopy:8x3x64x64,metadata:8x14" in line for line in lines), lines

    case = read_release(synthetic_release).split("test")[0]
    photos = ["--clinical", str(case.clinical), "--derm", str(case.derm)]
    patient = [f"--{k}={v}" for k, v in PATIENT.items()]
    ok = runner.invoke(app, ["diagnose", "--bundle", str(written["openvino"]), *photos, *patient, "--json"])
    assert ok.exit_code == 0, ok.output
    answer = json.loads(ok.output)
    assert answer["metadata"] == PATIENT and set(answer["tasks"]) == set(L.TASK_KEYS)
    text = runner.invoke(app, ["diagnose", "--bundle", str(written["openvino"]), *photos, *patient])
    assert text.exit_code == 0 and "patient: sex female, location back, elevation palpable" in text.output
    # the same case from Python, through each runtime: the same probabilities as the torch bundle's
    torch_probs = load_bundle(written["torch"]).predict(case.clinical, case.derm, PATIENT)
    onnx_probs = load_bundle(written["jetson"], backend="onnxruntime").predict(case.clinical, case.derm, PATIENT)
    assert onnx_probs.top("DIAG")[0] in L.TASKS[0].classes and torch_probs.top("DIAG")[0] in L.TASKS[0].classes

    missing = runner.invoke(app, ["diagnose", "--bundle", str(written["openvino"]), *photos, "--sex", "male"])
    assert missing.exit_code != 0
    assert "allowed --location: abdomen, acral" in _words(missing.output), missing.output
    unknown = runner.invoke(app, ["diagnose", "--bundle", str(written["openvino"]), *photos, "--sex", "male",
                                  "--location", "elbow", "--elevation", "flat"])
    assert unknown.exit_code != 0 and "--location: unknown value 'elbow' (allowed: abdomen" in _words(unknown.output)
    predictor = load_bundle(written["openvino"])
    with pytest.raises(EdgeDermError, match=r"metadata elevation: missing \(allowed: flat, palpable, nodular\)"):
        predictor.predict(case.clinical, case.derm, {"sex": "male", "location": "back"})
    with pytest.raises(EdgeDermError, match=r"takes 3 items per case \(clinical, dermoscopy, metadata\), got 2"):
        predictor.predict(case.clinical, case.derm)
    with pytest.raises(EdgeDermError, match=r"metadata input has shape \(1, 9\), expected N x 14"):
        predictor.run(*(np.zeros((1, 3, 64, 64), np.float32) for _ in range(2)), np.zeros((1, 9), np.float32))

    table = tmp_path / "cases.csv"
    table.write_text(f"id,clinical,derm,sex,location,elevation\n"
                     f"a,{case.clinical},{case.derm},male,head neck,flat\n"
                     f"b,{case.clinical},{case.derm},male,elbow,flat\n")
    out = tmp_path / "results.csv"
    result = runner.invoke(app, ["diagnose", "--bundle", str(written["jetson"]), "--backend", "onnxruntime",
                                 "--pairs", str(table), "--out", str(out)])
    assert result.exit_code == 1 and "line 3 (b): " in result.output and "unknown value 'elbow'" in result.output
    rows = list(csv.DictReader(out.open()))
    assert [r["status"] for r in rows] == ["ok", "error"] and rows[0]["location"] == "head neck"
    assert rows[0]["diagnosis"] in L.TASKS[0].classes
    no_columns = tmp_path / "photos.csv"
    no_columns.write_text(f"clinical,derm\n{case.clinical},{case.derm}\n")
    refused = runner.invoke(app, ["diagnose", "--bundle", str(written["openvino"]), "--pairs", str(no_columns),
                                  "--out", str(tmp_path / "never.csv")])
    assert refused.exit_code != 0 and "missing column(s) sex, location, elevation" in _words(refused.output)
    assert not (tmp_path / "never.csv").exists()

    bench_against_torch(written, synthetic_release, report)

    with pytest.raises(EdgeDermError, match="the clinic app takes two-photo bundles; this one takes clinical, "
                                            "dermoscopy, metadata"):
        build_clinic(written["openvino"], tmp_path / "clinic")
