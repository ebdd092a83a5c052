"""INT8 that passes by construction: every INT8 export is judged on the valid
split; the Jetson path leaves its most sensitive layers out of Q/DQ when plain
PTQ fails, OpenVINO turns to NNCF's accuracy control, and when nothing passes
the export stops with one line and writes no INT8 bundle. Real exports of the
session's trained tiny run on the synthetic release."""
import json

import onnx
import pytest
from typer.testing import CliRunner

from edgederm.cli import app
from edgederm.export import int8_gate
from edgederm.export.exporter import ExportRequest, export
from edgederm.runtime.bundle import read_manifest


def _quantized_inputs(graph: onnx.GraphProto) -> dict[str, bool]:
    """Conv/MatMul/Gemm node -> whether any of its inputs comes from a DequantizeLinear."""
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name: any(i in dq_outputs for i in n.input) for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")}


def test_exclusion_counts_double_and_end_at_the_limit():
    assert int8_gate._exclusion_counts(1) == [1]
    assert int8_gate._exclusion_counts(4) == [1, 2, 4]
    assert int8_gate._exclusion_counts(17) == [1, 2, 4, 8, 16, 17]


def test_jetson_keeps_the_most_sensitive_layers_in_float_until_the_gate_passes(trained_run, synthetic_release,
                                                                               tmp_path, monkeypatch):
    # Margin 0: only a graph whose valid predictions match FP32 on every resample passes; with every layer
    # allowed out of Q/DQ the search must get there, and record what it kept in float and why.
    monkeypatch.setattr(int8_gate, "MAX_EXCLUDED_SHARE", 1.0)
    lines = []
    [bundle] = export(ExportRequest(run=trained_run, target="jetson", data=synthetic_release, out=tmp_path,
                                    max_auc_drop=0.0), log=lines.append)
    manifest = read_manifest(bundle)
    record = manifest["int8_gate"]
    attempts = record["attempts"]
    assert record["split"] == "valid" and record["gate"]["max_auc_drop"] == 0.0
    assert attempts[0]["method"] == "plain PTQ (symmetric Q/DQ)" and attempts[0]["verdict"] == "fail"
    assert attempts[-1]["verdict"] == "pass" and record["chosen"] == len(attempts) - 1 >= 1
    kept = attempts[-1]["kept_in_float"]
    assert kept and manifest["quantization"]["kept_in_float"] == kept
    assert "signal-to-quantization-noise" in attempts[-1]["why"] and kept[0] in attempts[-1]["why"]
    quantized = _quantized_inputs(onnx.load(str(bundle / "model.int8.onnx")).graph)
    assert not any(quantized[name] for name in kept)                     # really out of Q/DQ
    assert any("most sensitive layer" in line for line in lines)


def test_no_passing_int8_graph_stops_the_export_and_writes_nothing(trained_run, synthetic_release, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--run", str(trained_run), "--target", "jetson", "--data",
                                 str(synthetic_release), "--out", str(tmp_path), "--max-auc-drop", "-100"])
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "no INT8 graph passes the gate on the valid split" in error[0]
    assert "plain PTQ (symmetric Q/DQ)" in error[0] and "No INT8 bundle written" in error[0]
    assert not (tmp_path / f"{trained_run.name}-jetson-int8").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]      # no staged leftovers


@pytest.mark.parametrize("margin, verdict", [(50.0, "pass")])
def test_openvino_int8_records_the_gate_on_valid(bundles, margin, verdict):
    manifest = read_manifest(bundles["openvino-int8"])
    record = manifest["int8_gate"]
    assert record["gate"]["max_auc_drop"] == margin and record["attempts"][0]["method"] == "plain PTQ (NNCF)"
    assert record["attempts"][0]["verdict"] == verdict and record["chosen"] == 0
    assert manifest["quantization"]["kept_in_float"] == []
    assert json.dumps(record)       # plain JSON all the way down


def test_openvino_turns_to_accuracy_control_and_refuses_when_it_cannot_pass(bundles, trained_run, synthetic_release,
                                                                          tmp_path):
    # A margin between plain PTQ's drop on valid and its upper bound: NNCF's accuracy control (which
    # compares means) accepts the plain model at once, and the bootstrap gate refuses it again.
    plain = read_manifest(bundles["openvino-int8"])["int8_gate"]["attempts"][0]
    low, high = max(plain["auc_drop_points"], 0.0), plain["upper_bound_points"]
    assert high > low + 0.1                                   # 8 valid cases: a wide interval
    lines = []
    with pytest.raises(int8_gate.NoPassingInt8, match=r"openvino int8: no INT8 graph passes .*tried plain PTQ "
                                                      r"\(NNCF\): .*; NNCF accuracy control: "):
        export(ExportRequest(run=trained_run, target="openvino", precisions="int8", data=synthetic_release,
                             out=tmp_path, max_auc_drop=(low + high) / 2), log=lines.append)
    assert any("NNCF accuracy control" in line for line in lines)
    assert not (tmp_path / f"{trained_run.name}-openvino-int8").exists()
