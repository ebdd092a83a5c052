"""The device side: one predictor API over every backend, `diagnose` for a pair
and for a CSV of pairs, `bench` with its gate and reports, bad inputs, and the
rule that device-side commands never import torch, timm or nncf."""
import csv
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from edgederm import labels as L
from edgederm.cli import app
from edgederm.data.release import read_release
from edgederm.errors import EdgeDermError
from edgederm.scoring.calibration import apply_temperatures
from edgederm.runtime import load_bundle
from edgederm.runtime.bundle import BundleError, read_manifest
from tests.helpers import write_jpeg

runner = CliRunner()


@pytest.fixture(scope="module")
def pair(synthetic_release):
    case = read_release(synthetic_release).split("test")[0]
    return case.clinical, case.derm


def test_every_backend_gives_the_same_answer_through_one_api(bundles, pair, synthetic_release):
    reference = load_bundle(bundles["torch-fp32"])
    pairs = [(c.clinical, c.derm) for c in read_release(synthetic_release).split("test")]
    inputs = reference.prepare_pairs(pairs)
    expected = reference.run_batched(*inputs)          # the graphs' own outputs, before temperature scaling
    for name in ("onnx-fp32", "openvino-fp32", "openvino-int8"):
        predictor = load_bundle(bundles[name])
        got = predictor.run_batched(*inputs)
        diffs = got - expected
        sums = np.stack([got[:, L.TASK_SLICES[t]].sum(1) for t in L.TASK_KEYS], 1)
        # predict_batch is those outputs, temperature-scaled with the bundle's fit, for each pair
        calibrated = apply_temperatures(got, predictor.calibration["temperatures"])
        first = predictor.predict_batch(pairs[:2])
        assert [first[1].probabilities["DIAG"][c] for c in L.TASKS[0].classes] == pytest.approx(
            calibrated[1, L.TASK_SLICES["DIAG"]].tolist(), abs=1e-5)
        if "fp32" in name:
            assert np.abs(diffs).max() <= 1e-4 and np.abs(sums - 1).max() <= 1e-4, name
        else:
            # INT8 of this 3-epoch, 64-px toy model moves single probabilities by up to about 0.2 (mean 0.04
            # over the split); a broken graph moves all of them. What INT8 keeps on a trained model is the
            # gate's job (test_int8_gate.py, the quickstart).
            assert np.abs(diffs).max() <= 0.3 and np.abs(diffs).mean() <= 0.08, name
            assert np.abs(sums - 1).max() <= 0.03, name
        single = predictor.predict(*pair)
        batch = predictor.predict_batch([pair, pair, pair])
        assert len(batch) == 3 and batch[2].probabilities == batch[0].probabilities
        for task in L.TASK_KEYS:
            for cls, p in single.probabilities[task].items():
                assert p == pytest.approx(batch[0].probabilities[task][cls], abs=1e-5)
    qdq = load_bundle(bundles["jetson-int8"], backend="onnxruntime")
    assert qdq.graph == "model.int8.onnx" and qdq.predict(*pair).top("DIAG")[0] in L.TASKS[0].classes


def test_runtime_preprocessing_is_the_training_evaluation_transform(bundles, pair):
    from edgederm.data.release import Case
    from edgederm.data.torch_dataset import PairDataset
    predictor = load_bundle(bundles["onnx-fp32"])
    case = Case(row=0, case_num="1", clinical=pair[0], derm=pair[1], labels=(0,) * 8)
    clinical, derm, _ = PairDataset([case], predictor.preprocess)[0]
    np.testing.assert_array_equal(predictor.prepare(pair[0]), clinical.numpy())
    np.testing.assert_array_equal(predictor.prepare(pair[1]), derm.numpy())


def test_tensorrt_bundle_without_engine_says_how_to_build_it(bundles):
    with pytest.raises(EdgeDermError, match="no engine yet; build it on this device: edgederm engine build"):
        load_bundle(bundles["jetson-int8"])


def test_engine_built_elsewhere_is_refused_with_the_fix():
    from edgederm.runtime.tensorrt_backend import engine_mismatch
    recorded = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "sm_count": 16, "l4t": "36.4.0"}
    assert engine_mismatch(recorded, dict(recorded)) == []
    assert engine_mismatch(recorded, {**recorded, "tensorrt": "8.6.2"}) == ["tensorrt 10.3.0 (here 8.6.2)"]


def test_bad_batch_sizes(bundles):
    predictor = load_bundle(bundles["onnx-fp32"])
    predictor.max_batch = 4            # as a TensorRT engine built with --max-batch 4
    x = np.zeros((5, 3, 64, 64), np.float32)
    with pytest.raises(EdgeDermError, match="batch size 5 is larger than this engine takes \\(4\\)"):
        predictor.run(x, x)
    with pytest.raises(EdgeDermError, match="expected N x 3 x 64 x 64"):
        predictor.run(np.zeros((1, 3, 32, 32), np.float32), np.zeros((1, 3, 32, 32), np.float32))
    assert predictor.run_batched(x, x).shape == (5, 24)     # batched form splits to what it can take


def test_diagnose_text_and_json(bundles, pair):
    result = runner.invoke(app, ["diagnose", "--bundle", str(bundles["openvino-int8"]),
                                 "--clinical", str(pair[0]), "--derm", str(pair[1])])
    assert result.exit_code == 0, result.output
    assert "decision support, not a diagnosis" in result.output
    assert "Seven-point checklist score:" in result.output and "Diagnosis (model):" in result.output
    assert "the threshold that referred 90 % of the validation melanomas" in result.output
    result = runner.invoke(app, ["diagnose", "--bundle", str(bundles["onnx-fp32"]),
                                 "--clinical", str(pair[0]), "--derm", str(pair[1]), "--json"])
    data = json.loads(result.output)
    assert set(data["tasks"]) == set(L.TASK_KEYS)
    sp = data["seven_point"]
    tops = {t: v["top"] for t, v in data["tasks"].items()}
    assert sp["score"] == L.seven_point_score(tops)
    # the bundle carries training's fit: calibrated probabilities, the expected score at its threshold
    fit = read_manifest(bundles["onnx-fp32"])["calibration"]
    assert data["calibrated"] and sp["reading"] == "expected" and sp["threshold"] == fit["seven_point"]["threshold"]
    assert sp["suspicious"] == (sp["expected_score"] >= fit["seven_point"]["threshold"])
    expected = sum(pts * data["tasks"][t]["probabilities"][c] for t, c, pts in L.SEVEN_POINT_CRITERIA)
    assert sp["expected_score"] == pytest.approx(expected)
    predictor = load_bundle(bundles["onnx-fp32"])
    raw = predictor.run(*predictor.prepare_pairs([pair]))
    calibrated = apply_temperatures(raw, fit["temperatures"])[0, L.TASK_SLICES["DIAG"]]
    assert [data["diagnosis"][c] for c in L.TASKS[0].classes] == pytest.approx(calibrated.tolist())
    assert data["melanoma"]["refer"] == (data["diagnosis"]["MEL"] >= fit["melanoma_probability_threshold"])
    assert {(c["task"], c["class"]) for c in sp["contributions"]} == {
        (t, c) for t, c, _ in L.SEVEN_POINT_CRITERIA if tops[t] == c}
    assert "not a diagnosis" in data["disclaimer"]


def _image_variants(folder, pair):
    rgb = cv2.cvtColor(cv2.imread(str(pair[0])), cv2.COLOR_BGR2RGB)
    good = write_jpeg(folder / "good.jpg", rgb)
    data = good.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "garbage.jpg").write_bytes(b"garbage" * 20)
    cv2.imwrite(str(folder / "grey.png"), rgb[:, :, 0])
    cv2.imwrite(str(folder / "rgba.png"), np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 255, np.uint8)]))
    cv2.imwrite(str(folder / "deep.png"), rgb[:, :, ::-1].astype(np.uint16) * 257)
    write_jpeg(folder / "tiny.jpg", rgb[:2, :2])          # a 2 x 2 thumbnail
    return good


def test_diagnose_pairs_reports_bad_rows_and_finishes_the_batch(bundles, pair, tmp_path):
    _image_variants(tmp_path, pair)
    rows = [("a", "good.jpg", "good.jpg"), ("b", "truncated.jpg", "good.jpg"), ("c", "good.jpg", "empty.jpg"),
            ("d", "grey.png", "good.jpg"), ("e", "rgba.png", "deep.png"), ("f", "missing.jpg", "good.jpg"),
            ("g", "good.jpg", "garbage.jpg")]
    with open(tmp_path / "visits.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "clinical", "derm"), *rows])
    out = tmp_path / "results.csv"
    result = runner.invoke(app, ["diagnose", "--bundle", str(bundles["onnx-fp32"]), "--pairs",
                                 str(tmp_path / "visits.csv"), "--out", str(out)])
    assert result.exit_code == 1                          # some rows failed...
    with open(out, newline="") as f:
        written = {r["id"]: r for r in csv.DictReader(f)}
    assert list(written) == [r[0] for r in rows]          # ...but every row is in the results
    assert [written[k]["status"] for k in "abcdefg"] == ["ok", "error", "error", "error", "ok", "error", "error"]
    assert "truncated" in written["b"]["error"] and "empty file" in written["c"]["error"]
    assert "grayscale" in written["d"]["error"] and "not found" in written["f"]["error"]
    assert written["a"]["diagnosis"] in L.TASKS[0].classes and written["a"]["seven_point_score"].isdigit()
    assert "wrote 7 rows" in result.output and "(5 failed)" in result.output
    # a single case's flag beside --pairs would be ignored: refused in one line, the results left as they are
    before = out.read_bytes()
    beside = runner.invoke(app, ["diagnose", "--bundle", str(bundles["onnx-fp32"]), "--pairs",
                                 str(tmp_path / "visits.csv"), "--out", str(out), "--clinical", str(pair[0])])
    assert beside.exit_code != 0 and "--clinical cannot be given beside it" in beside.output
    assert "visits.csv" in beside.output and out.read_bytes() == before


def test_diagnose_single_pair_errors_are_one_line(bundles, pair, tmp_path):
    _image_variants(tmp_path, pair)
    for name, message in (("truncated.jpg", "truncated"), ("grey.png", "grayscale"), ("nope.jpg", "file not found"),
                          ("tiny.jpg", "photo of 2 x 2 pixels is smaller than the model's 64-pixel input")):
        result = runner.invoke(app, ["diagnose", "--bundle", str(bundles["onnx-fp32"]),
                                     "--clinical", str(tmp_path / name), "--derm", str(pair[1])])
        assert result.exit_code == 1 and message in result.output and name in result.output
        assert result.output.count("\n") == 1


def test_tampered_and_future_bundles_are_refused(bundles, pair, tmp_path):
    tampered = shutil.copytree(bundles["onnx-fp32"], tmp_path / "tampered")
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[-100] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(data))
    result = runner.invoke(app, ["diagnose", "--bundle", str(tampered), "--clinical", str(pair[0]), "--derm", str(pair[1])])
    assert result.exit_code == 1 and "model.onnx does not match its sha256" in result.output
    future = shutil.copytree(bundles["onnx-fp32"], tmp_path / "future")
    manifest = json.loads((future / "manifest.json").read_text())
    manifest["format_version"] = 99
    (future / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bundle format 99 is newer than this EdgeDerm reads"):
        load_bundle(future)


def test_bench_gate_reports_and_fastest_variant(bundles, synthetic_release, tmp_path):
    report = tmp_path / "report"
    result = runner.invoke(app, [
        "bench", "--bundle", str(bundles["torch-fp32"]), "--bundle", str(bundles["onnx-fp32"]),
        "--bundle", str(bundles["openvino-int8"]), "--bundle", f"{bundles['jetson-int8']}@onnxruntime",
        "--reference", str(bundles["onnx-fp32"]), "--data", str(synthetic_release), "--batch", "1,2",
        "--warmup", "1", "--runs", "3", "--rounds", "2", "--max-auc-drop", "50", "--max-flip-rate", "100", "--report", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads((report / "report.json").read_text())
    rows = {r["name"]: r for r in data["variants"]}
    assert rows[bundles["onnx-fp32"].name]["verdict"] == "reference"
    torch_gate = rows[bundles["torch-fp32"].name]["gate"]
    assert torch_gate["auc"]["drop_points"] == pytest.approx(0, abs=1e-3)
    assert torch_gate["flips"]["diagnosis"]["flips"] == 0 and torch_gate["verdict"] == "pass"
    assert data["gate"]["resamples"] == 2000 and "bootstrap" in data["gate"]["method"]
    for r in rows.values():
        # 3 timed runs in each of 2 rounds, pooled
        assert [lat["batch"] for lat in r["latency"]] == [1, 2] and len(r["latency"][0]["times_ms"]) == 6
        assert r["latency"][0]["p50_ms"] > 0 and r["size_mb"] > 0 and r["load_s"] > 0
        assert set(r["accuracy"]["auc"]) == {L.category_name(*c) for c in L.AUC_CATEGORIES}
    assert data["fastest_passing"] in rows
    # Every bundle holds the same weights, so each is also compared with that model's PyTorch FP32 bundle.
    torch_ms = rows[bundles["torch-fp32"].name]["latency"][0]["mean_ms"]
    for r in rows.values():
        assert r["speedup_vs_own_torch_fp32"] == pytest.approx(torch_ms / r["latency"][0]["mean_ms"])
    assert data["host"]["cores"] >= 1 and "int8_instructions" in data["host"]
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "| variant |" in (report / "report.md").read_text()
    # with the reference bundle's fit: each variant's calibration and melanoma operating points
    fit = read_manifest(bundles["onnx-fp32"])["calibration"]
    torch_calibration = rows[bundles["torch-fp32"].name]["calibration"]
    assert set(torch_calibration["ece_percent"]) == set(L.TASK_KEYS)
    assert torch_calibration["melanoma"]["seven_point_expected"]["threshold"] == fit["seven_point"]["threshold"]
    assert torch_calibration["melanoma"] == rows[bundles["onnx-fp32"].name]["calibration"]["melanoma"]  # same model
    md = (report / "report.md").read_text()
    assert "## Calibration and melanoma operating points" in md and "expected score sens / spec" in md
    assert '<table id="clinic">' in (report / "report.html").read_text()
    # the clinic's operating point, per variant: the reading diagnose reports, at the reference's threshold
    point = torch_calibration["operating_point"]
    expected = torch_calibration["melanoma"]["seven_point_expected"]
    assert point["reading"] == "seven_point_expected" and point["threshold"] == fit["seven_point"]["threshold"]
    assert (point["specificity"], point["referred_percent"]) == (expected["specificity"], expected["referred_percent"])
    assert f"{100 * point['specificity']:.1f} / {point['referred_percent']:.1f} %" in md
    assert "clinic: spec / referred" in md
    # beside it, that reading on valid, where its threshold was chosen (carried by the fit)
    on_valid = torch_calibration["valid_operating_point"]
    assert on_valid == fit["valid_operating_point"] and on_valid["reading"] == "seven_point_expected"
    assert f"{100 * on_valid['specificity']:.1f} @ {100 * on_valid['sensitivity']:.1f}" in md
    assert torch_gate["seven_point_reading"].startswith("expected seven-point score >= ")
    # what each variant's float operations ran in: read back from OpenVINO, recorded in the report
    assert rows[bundles["openvino-int8"].name]["float_precision"] == "f32"
    assert rows[bundles["onnx-fp32"].name]["float_precision"] is None
    # and how each INT8 variant was quantized, with what stayed in float (the attempt its export chose)
    int8_row = rows[bundles["openvino-int8"].name]
    assert int8_row["quantization"] == read_manifest(bundles["openvino-int8"])["quantization"]
    assert int8_row["quantization"]["method"] == "plain PTQ (NNCF)"
    assert "| int8 (PTQ; float ops f32) |" in md
    assert "confident, " in md and "confident_flips" in torch_gate["flips"]["diagnosis"]


def test_openvino_runs_a_bundle_in_the_float_precision_its_export_gated(bundles, tmp_path, monkeypatch):
    """The export records the INFERENCE_PRECISION_HINT it scored with (f32 for FP32 and INT8, the device's
    own for FP16), and the runtime compiles with it; bundles from before it was recorded get f32 for FP32
    and INT8. Checked at the compiler's door, and against what the device itself defaults to (f32 on
    AVX2 CPUs, bf16 on CPUs with AVX512_BF16 or AMX) for the bundle that carries no hint."""
    import openvino as ov
    device_default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    hints, compile_model = [], ov.Core.compile_model

    def recording(self, model, device, config=None):
        hints.append((config or {}).get("INFERENCE_PRECISION_HINT"))
        return compile_model(self, model, device, config or {})
    monkeypatch.setattr(ov.Core, "compile_model", recording)
    expected = {"openvino-fp32": "f32", "openvino-int8": "f32", "openvino-fp16": None}
    for name, hint in expected.items():
        assert read_manifest(bundles[name])["inference_precision"] == hint
        hints.clear()
        predictor = load_bundle(bundles[name])
        assert hints == [hint] and predictor.float_precision == (hint or device_default)
    recorded = shutil.copytree(bundles["openvino-int8"], tmp_path / "bf16")
    manifest = json.loads((recorded / "manifest.json").read_text())
    manifest["inference_precision"] = "bf16"          # as an export on an AMX CPU gated with bf16 would record
    (recorded / "manifest.json").write_text(json.dumps(manifest))
    hints.clear()
    load_bundle(recorded)
    assert hints == ["bf16"]
    manifest["inference_precision"] = "f64"           # a hand-edited manifest: one line, before any compile
    (recorded / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgeDermError, match="inference_precision 'f64' is not one OpenVINO takes"):
        load_bundle(recorded)
    del manifest["inference_precision"]               # written before the precision was recorded
    (recorded / "manifest.json").write_text(json.dumps(manifest))
    hints.clear()
    load_bundle(recorded)
    assert hints == ["f32"]


def test_bench_times_photos_end_to_end_and_gates_reduced_decoding(bundles, synthetic_release, tmp_path):
    from edgederm.benchmarks.photos import write_phone_pair
    from edgederm.preprocess import header_size
    case = read_release(synthetic_release).split("test")[0]
    phone = tmp_path / "phone"
    clinical, derm = write_phone_pair(phone, case.clinical, case.derm, size=(1600, 1200))
    assert header_size(clinical.read_bytes()) == (1600, 1200) and header_size(derm.read_bytes()) == (1600, 1200)
    report = tmp_path / "report"
    fp32 = str(bundles["onnx-fp32"])
    result = runner.invoke(app, [
        "bench", "--bundle", fp32, "--bundle", f"{fp32}+reduced", "--reference", fp32, "--data", str(synthetic_release),
        "--warmup", "0", "--runs", "2", "--photos", str(phone), "--e2e-runs", "3", "--max-auc-drop", "50", "--max-flip-rate", "100",
        "--report", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads((report / "report.json").read_text())
    rows = {r["name"]: r for r in data["variants"]}
    full, reduced = rows[bundles["onnx-fp32"].name], rows[bundles["onnx-fp32"].name + "+reduced"]
    assert (full["decode"], reduced["decode"]) == ("full", "reduced")
    assert [e["photos"] for e in full["end_to_end"]] == ["test split, 768 x 512", "phone, 1600 x 1200"]
    for e2e in full["end_to_end"] + reduced["end_to_end"]:
        assert e2e["runs"] == 3 and 0 < e2e["decode_preprocess_share"] < 1
        assert e2e["mean_ms"] == pytest.approx(e2e["decode_preprocess_ms"] + e2e["inference_ms"])
        assert e2e["p50_ms"] <= e2e["p99_ms"]
    # the 64-px model decodes the 768 x 512 photos at 1/4 and the 1600 x 1200 ones at 1/8 when reduced: other
    # inputs, so the gate scores reduced decoding against full decoding of the same model on the same cases
    from dataclasses import replace

    from edgederm.preprocess import load_input
    cfg = load_bundle(bundles["onnx-fp32"]).preprocess
    assert not np.array_equal(load_input(case.derm, cfg), load_input(case.derm, replace(cfg, decode="reduced")))
    assert reduced["gate"]["flips"]["diagnosis"]["cases"] == full["accuracy"]["cases"] and reduced["verdict"] == "pass"
    assert "end to end" in (report / "report.md").read_text().lower()
    assert "photos to answer" in (report / "report.html").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = runner.invoke(app, ["bench", "--bundle", fp32, "--photos", str(empty), "--report", str(tmp_path / "r2")])
    assert bad.exit_code == 1 and "empty: no .jpg, .jpeg or .png photos to time" in bad.output


def test_diagnose_pairs_decodes_the_next_pair_while_inferring(bundles, synthetic_release, tmp_path):
    from edgederm.runtime.diagnose import diagnose_pairs
    cases = read_release(synthetic_release).split("test")[:4]
    rows = [f"{c.case_id},{c.clinical},{c.derm}" for c in cases] + ["broken,missing.jpg,missing.jpg"]
    (tmp_path / "pairs.csv").write_text("id,clinical,derm\n" + "\n".join(rows) + "\n")
    predictor = load_bundle(bundles["onnx-fp32"])
    written, failures = diagnose_pairs(predictor, tmp_path / "pairs.csv", tmp_path / "out.csv")
    assert written == 5 and len(failures) == 1 and "missing.jpg: file not found" in failures[0]
    with open(tmp_path / "out.csv") as f:
        out = list(csv.DictReader(f))
    for case, row in zip(cases, out):      # the pipelined answers are the one-pair-at-a-time answers, in order
        expected = predictor.predict(case.clinical, case.derm)
        assert row["id"] == case.case_id and row["diagnosis"] == expected.top("DIAG")[0]
        assert float(row["diagnosis_probability"]) == pytest.approx(expected.top("DIAG")[1], abs=1e-4)
    assert out[-1]["status"] == "error"


def test_bench_exits_1_when_a_variant_fails_the_gate(bundles, synthetic_release, tmp_path):
    result = runner.invoke(app, [
        "bench", "--bundle", str(bundles["openvino-int8"]), "--bundle", str(bundles["jetson-int8"]),
        "--reference", str(bundles["openvino-fp32"]), "--data", str(synthetic_release),
        "--warmup", "0", "--runs", "2", "--max-auc-drop", "-100", "--report", str(tmp_path / "r")])
    assert result.exit_code == 1
    rows = {r["name"]: r for r in json.loads((tmp_path / "r" / "report.json").read_text())["variants"]}
    assert rows[bundles["openvino-int8"].name]["verdict"] == "fail"         # no drop is below -100 points: always fails
    assert "upper bound" in rows[bundles["openvino-int8"].name]["gate"]["reasons"][0]
    assert "fail (averaged-AUC drop upper bound" in result.output
    assert rows[bundles["jetson-int8"].name]["status"] == "failed"          # no engine: a failed row, no crash


DEVICE_SIDE = """
import sys
from edgederm.cli import app
try:
    app(sys.argv[1:])
except SystemExit as e:
    assert e.code in (0, None), e.code
print("HEAVY", sorted(m for m in ("torch", "timm", "nncf") if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("bundle_name", ["onnx-fp32", "openvino-int8"])
def test_device_side_commands_never_import_torch_timm_or_nncf(bundles, pair, synthetic_release, tmp_path, bundle_name):
    bundle = str(bundles[bundle_name])
    for args in (["diagnose", "--bundle", bundle, "--clinical", str(pair[0]), "--derm", str(pair[1]), "--json"],
                 ["bench", "--bundle", bundle, "--data", str(synthetic_release), "--warmup", "0", "--runs", "2",
                  "--report", str(tmp_path / "r"), "--json"]):
        result = subprocess.run([sys.executable, "-c", DEVICE_SIDE, *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "HEAVY []" in result.stderr, (args[0], result.stderr[-500:])


def test_a_torch_bundle_without_torch_is_a_one_line_error(bundles):
    """A device install has no torch: its torch-bundle backend (an entry point) cannot load, and says so."""
    script = ("import sys; sys.modules['torch'] = None\n"
              "from edgederm.cli import main\n"
              f"sys.argv = ['edgederm', 'diagnose', '--bundle', {str(bundles['torch-fp32'])!r}, '--clinical', 'c.jpg', "
              "'--derm', 'd.jpg']\nmain()\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bundles['torch-fp32']}: the torch backend cannot load")
