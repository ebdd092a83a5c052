"""Graphs typed FP16 for TensorRT 11 keep the FP32 model's decisions (export/fp16_typing.py): judged on valid
like INT8, and the blocks that lose the decisions kept FP32. The session's trained tiny run, its FP32 graph
made FP16-hostile in one block of its own: the dermoscopy photo times 1e7, then times 1e-7, exact in FP32,
while FP16's weights saturate (1e7 becomes 65504, 1e-7 its smallest subnormal): a nearly black photo."""
import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgederm.data.inputs import load_arrays
from edgederm.data.release import read_release
from edgederm.scoring.gate import GateSettings
from edgederm.export import fp16_typing, int8_gate, tensorrt_export
from edgederm.export.bundles import _onnx_predictor
from edgederm.export.onnx_export import export_onnx, run_torch
from edgederm.models.io import load_model

HOSTILE_BLOCK = "/model/derm_encoder/hostile/round"


def _hostile(graph: onnx.ModelProto) -> onnx.ModelProto:
    """The dermoscopy input passed through x * 1e7 * 1e-7 in a block of its own before its readers."""
    g = graph.graph
    g.initializer.extend([numpy_helper.from_array(np.array(1e7, np.float32), "hostile_up_scale"),
                          numpy_helper.from_array(np.array(1e-7, np.float32), "hostile_down_scale")])
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == "dermoscopy":
                node.input[i] = "hostile_out"
    nodes = [helper.make_node("Mul", ["dermoscopy", "hostile_up_scale"], ["hostile_up"], name=f"{HOSTILE_BLOCK}/Up"),
             helper.make_node("Mul", ["hostile_up", "hostile_down_scale"], ["hostile_out"],
                              name=f"{HOSTILE_BLOCK}/Down")]
    rest = list(g.node)
    del g.node[:]
    g.node.extend(nodes + rest)
    return graph


def test_the_block_that_loses_decisions_in_fp16_stays_fp32(trained_run, synthetic_release, tmp_path):
    model = load_model(trained_run / "model.safetensors").eval()
    release = read_release(synthetic_release)
    cases = release.split("valid")
    inputs = load_arrays(cases, model.cfg.preprocess(), model.input_names)
    source = tmp_path / "hostile.onnx"
    onnx.save(_hostile(onnx.load(str(export_onnx(model, tmp_path / "model.onnx")))), str(source))
    reference = run_torch(model, *inputs)
    np.testing.assert_allclose(_onnx_predictor(source)(*inputs), reference, atol=1e-4)     # exact in FP32
    # wide flip limit: 8 valid cases; the AUC margin is what the rounded photo breaks
    valid = int8_gate.ValidSplit(inputs, np.array([c.labels for c in cases]), [c.case_id for c in cases], reference,
                                 GateSettings(max_auc_drop=5.0, max_flip_rate=100))
    lines = []
    graph, attempts, ranking = fp16_typing.search(source, tmp_path / "model.fp16.onnx", tensorrt_export.convert_fp16,
                                                  _onnx_predictor, valid, "FP16 graph", lines.append)
    assert attempts[0].method == "FP16 graph" and not attempts[0].passed
    assert ranking["blocks"][0]["block"] == HOSTILE_BLOCK and ranking["metric"] == fp16_typing.METRIC
    assert graph is not None and attempts[-1].passed and attempts[-1].kept_in_float[0] == HOSTILE_BLOCK
    typed = onnx.load(str(graph))
    kept = {n.name for n in typed.graph.node if n.name.startswith(HOSTILE_BLOCK)}
    assert kept == {f"{HOSTILE_BLOCK}/Up", f"{HOSTILE_BLOCK}/Down"}
    scales = {t.name: t.data_type for t in typed.graph.initializer if t.name.startswith("hostile")}
    assert set(scales.values()) == {onnx.TensorProto.FLOAT}                              # kept FP32
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in typed.graph.initializer)    # the rest is FP16
    record = fp16_typing.describe(graph, attempts, ranking)
    assert record["graph"] == "model.fp16.onnx" and record["kept_in_float32"][0] == HOSTILE_BLOCK
    assert "FP16 sensitivity" in " ".join(lines)


def test_a_typed_graph_that_cannot_pass_is_left_out(trained_run, synthetic_release, tmp_path):
    model = load_model(trained_run / "model.safetensors").eval()
    release = read_release(synthetic_release)
    cases = release.split("valid")
    inputs = load_arrays(cases, model.cfg.preprocess(), model.input_names)
    source = export_onnx(model, tmp_path / "model.onnx")
    valid = int8_gate.ValidSplit(inputs, np.array([c.labels for c in cases]), [c.case_id for c in cases],
                                 run_torch(model, *inputs), GateSettings(max_auc_drop=-100.0))
    out = tmp_path / "model.fp16.onnx"
    graph, attempts, ranking = fp16_typing.search(source, out, tensorrt_export.convert_fp16, _onnx_predictor,
                                                  valid, "FP16 graph", lambda m: None)
    assert graph is None and not out.exists() and len(attempts) >= 2 and ranking is not None
    assert fp16_typing.describe(graph, attempts, ranking)["graph"] is None
