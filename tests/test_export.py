"""Export: argument checks, the bundles of every target, manifest verification,
the Q/DQ graph TensorRT needs, atomic writing, and the engine command."""
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from edgederm.cli import app
from edgederm.errors import ConfigError
from edgederm.runtime.engine import INSTALL_HINT
from edgederm.export.exporter import ExportRequest, export
from edgederm.export.formats import parse_request
from edgederm.export.onnxruntime_scoring import onnxruntime_session
from edgederm.runtime import load_bundle
from edgederm.runtime.bundle import BundleError, read_manifest
from tests.helpers import half_bundle_then_interrupt, jetson_bundle_in_onnxruntime_form

runner = CliRunner()


def test_requests_are_checked_before_any_work():
    with pytest.raises(ConfigError, match="unknown target 'coreml' \\(choose from torch, onnx, openvino, jetson\\)"):
        parse_request("coreml", None)
    with pytest.raises(ConfigError, match="precision int4 is not available for target openvino"):
        parse_request("openvino", "fp32,int4")
    assert parse_request("jetson", None)[1] == ["int8"]


def test_every_bundle_verifies_and_reports_accuracy(bundles):
    assert set(bundles) == {"torch-fp32", "onnx-fp32", "openvino-fp32", "openvino-fp16", "openvino-int8", "jetson-int8"}
    for name, path in bundles.items():
        manifest = read_manifest(path)
        assert manifest["format_version"] == 1 and manifest["precision"] == name.split("-")[-1]
        assert [i["name"] for i in manifest["inputs"]] == ["clinical", "dermoscopy"]
        assert [o["name"] for o in manifest["outputs"]] == ["DIAG", "PN", "STR", "PIG", "RS", "DaG", "BWV", "VS"]
        assert manifest["preprocess"]["size"] == 64 and len(manifest["labels"]["auc_categories"]) == 17
        assert abs(sum(manifest["branch_weights"].values()) - 1) < 1e-6
        assert manifest["source"]["onnx_parity_max_abs_diff"] <= 1e-4
        # the tiny run started from random init: the manifest says so for both encoders
        initial = manifest["source"]["initial_weights"]
        assert {b: (r["encoder"], r["source"]) for b, r in initial.items()} == {
            "clinical": ("mobilenetv3_small_050", "random"), "derm": ("resnet10t", "random")}
        metrics = manifest["metrics"]
        assert metrics["split"] == "test" and 0 <= metrics["avg_auc"] <= 1
        assert metrics["auc_drop_points"] == pytest.approx(100 * (metrics["reference_avg_auc"] - metrics["avg_auc"]))
        for file, entry in manifest["files"].items():
            assert (path / file).stat().st_size == entry["bytes"]
    int8 = read_manifest(bundles["openvino-int8"])
    assert int8["calibration_set"]["count"] == len(int8["calibration_set"]["case_ids"]) > 0
    assert read_manifest(bundles["openvino-fp32"])["metrics"]["auc_drop_points"] == pytest.approx(0, abs=0.01)


def test_onnx_model_has_named_inputs_dynamic_batch_and_per_task_probabilities(bundles):
    model = onnx.load(str(bundles["onnx-fp32"] / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    session = onnxruntime_session(bundles["onnx-fp32"] / "model.onnx")
    for batch in (1, 3):
        x = np.random.default_rng(0).standard_normal((batch, 3, 64, 64), dtype=np.float32)
        outs = session.run(None, {"clinical": x, "dermoscopy": x})
        assert [o.shape for o in outs] == [(batch, k) for k in (5, 3, 3, 3, 2, 3, 2, 3)]
        for o in outs:
            np.testing.assert_allclose(o.sum(axis=1), 1.0, atol=1e-5)


def test_qdq_graph_is_what_tensorrt_explicit_quantization_needs(bundles):
    path = bundles["jetson-int8"] / "model.int8.onnx"
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 20
    weights = 0
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8, node.name          # signed int8
        assert not zero_point.any(), node.name                  # symmetric: zero points 0
        if node.op_type == "QuantizeLinear" and node.input[0] in inits:     # a weight, float behind its own pair
            weights += 1
            weight = inits[node.input[0]]
            assert weight.dtype == np.float32, node.name
            if weight.ndim == 4 and weight.shape[0] > 1:
                assert inits[node.input[1]].size == weight.shape[0], node.name   # per-channel scales
    assert weights > 0
    # Q/DQ sit where TensorRT fuses them: every quantized tensor feeds a Conv, MatMul or Gemm (its
    # other readers, an Add or a pooling, get their own DequantizeLinear of the same int8 tensor).
    quantized_inputs = {i for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm") for i in n.input}
    dequantized = {}
    for node in qdq:
        if node.op_type == "DequantizeLinear":
            dequantized.setdefault(node.input[0], []).append(node.output[0])
    for node in qdq:
        if node.op_type == "QuantizeLinear":
            assert set(dequantized[node.output[0]]) & quantized_inputs, node.name
    x = np.zeros((2, 3, 64, 64), np.float32)
    outs = onnxruntime_session(path).run(None, {"clinical": x, "dermoscopy": x})
    assert outs[0].shape == (2, 5)
    fp16 = onnx.load(str(bundles["jetson-int8"] / "model.fp16.onnx"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT     # float32 io
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    readme = (bundles["jetson-int8"] / "README.md").read_text()
    assert "/usr/src/tensorrt/bin/trtexec --onnx=model.int8.onnx" in readme and "edgederm engine build" in readme
    assert readme.startswith(f"# {bundles['jetson-int8'].name}: EdgeDerm bundle")      # not the staging folder


def test_a_changed_byte_is_refused(bundles, tmp_path):
    copy = shutil.copytree(bundles["openvino-int8"], tmp_path / "b")
    data = bytearray((copy / "model.bin").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.bin").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.bin does not match its sha256"):
        read_manifest(copy)
    (copy / "model.bin").unlink()
    with pytest.raises(BundleError, match="model.bin is listed in the manifest but missing"):
        read_manifest(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        read_manifest(copy)


def test_interrupted_export_leaves_no_bundle(trained_run, synthetic_release, tmp_path, monkeypatch):
    import edgederm.export.exporter as exporter
    monkeypatch.setitem(exporter.FORMAT_FUNCTIONS, "openvino", half_bundle_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        export(ExportRequest(run=trained_run, target="openvino", out=tmp_path), log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_bad_requests_are_one_line_and_leave_nothing(trained_run, synthetic_release, tmp_path):
    out = tmp_path / "exports"
    cases = [
        (["--run", str(tmp_path), "--target", "onnx"], "model.safetensors: not found"),
        (["--run", str(trained_run), "--target", "tflite"], "unknown target 'tflite'"),
        (["--run", str(trained_run), "--target", "openvino", "--precision", "int4"], "precision int4 is not available"),
        (["--run", str(trained_run), "--target", "jetson"], "--data is required: jetson int8 needs calibration"),
        (["--run", str(trained_run), "--target", "openvino", "--precision", "int8", "--data", str(synthetic_release),
          "--calibration-cases", "5000"], "fewer than the 5000 calibration cases"),
        (["--run", str(trained_run), "--target", "onnx", "--max-auc-drop", "0.5"], "apply to --precision int8, and to a jetson fp16"),
        (["--run", str(trained_run), "--target", "onnx", "--max-flip-rate", "5"], "apply to --precision int8, and to a jetson fp16"),
        (["--run", str(trained_run), "--target", "jetson", "--data", str(synthetic_release), "--max-flip-rate", "-1"],
         "--max-flip-rate -1: a share of cases, between 0 and 100 percent"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["export", *args, "--out", str(out)])
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and result.output.count("\n") == 1, result.output
        assert not out.exists() or list(out.iterdir()) == []


def test_existing_bundle_is_kept_without_force(bundles):
    before = (bundles["onnx-fp32"] / "manifest.json").read_bytes()
    run = json.loads(before)["source"]["run"]
    result = runner.invoke(app, ["export", "--run", run, "--target", "onnx", "--out", str(bundles["onnx-fp32"].parent)])
    assert result.exit_code == 1 and "already exists (use --force" in result.output
    assert (bundles["onnx-fp32"] / "manifest.json").read_bytes() == before


def test_engine_build_refuses_other_bundles(bundles):
    result = runner.invoke(app, ["engine", "build", "--bundle", str(bundles["onnx-fp32"])])
    assert result.exit_code == 1 and "engines are built from jetson bundles" in result.output


def test_engine_build_without_tensorrt_says_how_to_get_it(bundles):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here; this test covers machines without it")
    except ImportError:
        pass
    result = runner.invoke(app, ["engine", "build", "--bundle", str(bundles["jetson-int8"])])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {INSTALL_HINT}"
    assert read_manifest(bundles["jetson-int8"])["engine"] is None       # bundle untouched


def test_engine_build_with_tensorrt(bundles, tmp_path):
    pytest.importorskip("tensorrt", reason="tensorrt is not installed (no NVIDIA GPU here): engine build not run")
    copy = shutil.copytree(bundles["jetson-int8"], tmp_path / "jetson")
    result = runner.invoke(app, ["engine", "build", "--bundle", str(copy), "--workspace-mb", "512"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(copy)
    assert manifest["engine"]["file"] == "model.engine" and "tensorrt" in manifest["engine"]
    assert "trtexec --onnx=" in result.output and manifest["engine"]["profiles"] == [[1, 1], [2, 8]]


def test_an_fp16_jetson_bundle_is_gated_with_data_and_says_so_without(trained_run, synthetic_release, tmp_path):
    """An FP16-only Jetson export judges its graph on valid whenever --data is given (export/fp16_typing.py); without
    it the manifest says `not gated`, and `engine build` will not use that graph unless told --ungated."""
    from edgederm.runtime.engine import BuildPlan, EngineError
    from edgederm.export.fp16_typing import float32_operations
    gated, = export(ExportRequest(run=trained_run, target="jetson", precisions="fp16", data=synthetic_release,
                                  out=tmp_path / "with", max_auc_drop=50.0, max_flip_rate=100.0), log=lambda m: None)
    record = read_manifest(gated)["fp16"]
    assert record["gate"] == "passed" and record["attempts"][0]["method"] == "FP16 graph"
    assert record["valid"]["verdict"] == "pass" and record["valid"]["diagnosis_flip_percent"] is not None
    plan = BuildPlan.for_bundle("10.3.0", "fp16", read_manifest(gated))
    assert plan.gated and plan.builder_flags[0] == "FP16"
    ungated, = export(ExportRequest(run=trained_run, target="jetson", precisions="fp16", out=tmp_path / "without"),
                      log=lambda m: None)
    manifest = read_manifest(ungated)
    assert manifest["fp16"]["gate"] == "not gated" and manifest["fp16"]["attempts"] == []
    assert "without --data" in manifest["fp16"]["why"]
    # what it computes in FP32 is recorded all the same (LayerNorm, Softmax, ...): a --ungated build pins it
    fp32 = float32_operations(onnx.load(str(ungated / "model.fp16.onnx")), [])
    assert set(manifest["fp16"]["fp32_operations"]) == set(fp32) and fp32
    with pytest.raises(EngineError, match="its FP16 graph was not gated"):
        BuildPlan.for_bundle("10.3.0", "fp16", manifest, ungated)
    assert BuildPlan.for_bundle("10.3.0", "fp16", manifest, ungated, ungated=True).fp32_operations == tuple(fp32)


def test_targets_exported_side_by_side_equal_one_at_a_time(bundles, trained_run, synthetic_release, tmp_path):
    """export_many runs the targets concurrently (CONCURRENT_TARGETS); every graph must be the one a
    single-target export writes (the `bundles` fixture exports one target at a time)."""
    from edgederm.export.exporter import CONCURRENT_TARGETS, export_many, longest_first
    assert CONCURRENT_TARGETS >= 2
    # the INT8 searches start first; the bundles still come back in the order asked (below)
    plans = [("onnx", None, {"fp32": None}), ("openvino", None, {"fp32": None, "int8": None}),
             ("jetson", None, {"int8": None})]
    assert [i for i, _ in longest_first(plans)] == [1, 2, 0]
    requests = [ExportRequest(run=trained_run, target=target, precisions=precisions, data=synthetic_release,
                              out=tmp_path, max_auc_drop=50.0 if "int8" in precisions else None,
                              max_flip_rate=100.0 if "int8" in precisions else None)
                for target, precisions in (("onnx", "fp32"), ("openvino", "int8"), ("jetson", "int8"))]
    written = export_many(requests, log=lambda m: None)
    assert [p.name for p in written] == ["tiny-onnx-fp32", "tiny-openvino-int8", "tiny-jetson-int8"]   # plan order
    inputs = np.random.default_rng(0).standard_normal((2, 4, 3, 64, 64)).astype(np.float32)
    for path in written:
        alone_path = bundles[path.name.split("-", 1)[1]]
        alone, together = read_manifest(alone_path), read_manifest(path)
        # OpenVINO numbers the nodes it creates from a process-wide counter, so model.xml differs in names
        # between any two exports in one process; weights and every other file are byte for byte the same,
        # and the outputs too.
        same = {name for name in alone["files"] if name != "model.xml"}
        assert {n: together["files"][n] for n in same} == {n: alone["files"][n] for n in same}, path.name
        if "int8_gate" in alone:
            assert together["int8_gate"]["chosen"] == alone["int8_gate"]["chosen"]
        outputs = [load_bundle(p, backend="onnxruntime" if "jetson" in p.name else None).run(*inputs)
                   for p in (alone_path, path)]
        assert np.array_equal(*outputs), path.name


def test_every_jetson_graph_passes_the_tensorrt_check(bundles):
    from edgederm.export.jetson_check import check_graph
    graphs = ["model.int8.onnx", "model.fp16.onnx", "model.int8.fp16.onnx"]
    for graph in graphs:
        assert check_graph(bundles["jetson-int8"] / graph) == [], graph
    manifest = read_manifest(bundles["jetson-int8"])
    assert manifest["tensorrt_check"]["passed"] == manifest["graphs"] == graphs
    # the TensorRT 11 graph: opset 19, float16 weights and scales behind Q/DQ, float32 inputs and outputs
    typed = onnx.load(str(bundles["jetson-int8"] / "model.int8.fp16.onnx"))
    assert typed.opset_import[0].version == 19
    inits = {t.name: t for t in typed.graph.initializer}
    scales = [inits[n.input[1]] for n in typed.graph.node if n.op_type == "DequantizeLinear"]
    assert scales and all(t.data_type == onnx.TensorProto.FLOAT16 for t in scales)
    assert typed.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert manifest["int8_fp16"]["valid"]["verdict"] == "pass"
    # both typed graphs judged on valid like INT8 (export/fp16_typing.py); under these limits nothing kept FP32
    for key, graph in (("fp16", "model.fp16.onnx"), ("int8_fp16", "model.int8.fp16.onnx")):
        record = manifest[key]
        assert record["graph"] == graph and record["kept_in_float32"] == [] and record["attempts"][0]["verdict"] == "pass"


def test_a_jetson_graph_tensorrt_would_refuse_is_not_written(trained_run, synthetic_release, tmp_path, monkeypatch):
    import edgederm.export.exporter as exporter
    from edgederm.export.jetson_check import GraphFormError
    monkeypatch.setitem(exporter.FORMAT_FUNCTIONS, "jetson", jetson_bundle_in_onnxruntime_form)
    with pytest.raises(GraphFormError, match=r"jetson int8: model.int8.onnx: \d+ problem\(s\) for TensorRT 10.3, "
                                             r"first: .*(lone DequantizeLinear|shared by).*; no bundle written"):
        export(ExportRequest(run=trained_run, target="jetson", precisions="int8", data=synthetic_release,
                             out=tmp_path, max_auc_drop=100, max_flip_rate=100), log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def _qdq_model(weight_form: str = "pair", shared: bool = False, zero: int = 0, extra_op: str | None = None):
    """A Conv behind Q/DQ, built by hand in the forms TensorRT takes and refuses."""
    from onnx import TensorProto, helper
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(zero), "z"),
             numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"), numpy_helper.from_array(np.zeros(4, np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_x")]
    if weight_form == "pair":
        inits.append(numpy_helper.from_array(w, "w"))
        nodes += [helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], name="q_w", axis=0),
                  helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dq_w", axis=0)]
    else:                              # int8 initializer into a lone DequantizeLinear
        inits.append(numpy_helper.from_array(np.round(w * 100).astype(np.int8), "wq"))
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dq_w", axis=0))
    nodes.append(helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv"))
    outputs = ["y"]
    if shared:
        nodes.append(helper.make_node("Relu", ["xd"], ["r"], name="relu"))
        outputs.append("r")
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["y"], ["e"], name="extra"))
        outputs.append("e")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_tensorrt_check_names_what_tensorrt_refuses():
    from edgederm.export.jetson_check import check_qdq
    assert check_qdq(_qdq_model()) == []
    assert any("lone DequantizeLinear" in p for p in check_qdq(_qdq_model(weight_form="int8")))
    assert any("shared by 2 nodes" in p for p in check_qdq(_qdq_model(shared=True)))
    assert any("non-zero zero point" in p for p in check_qdq(_qdq_model(zero=3)))
    assert any("does not import: NonZero" in p for p in check_qdq(_qdq_model(extra_op="NonZero")))


def test_the_tensorrt_form_fixes_weights_and_shared_outputs_and_computes_the_same(tmp_path):
    from onnx import TensorProto, helper

    from edgederm.export.jetson_check import check_qdq
    from edgederm.export.tensorrt_export import tensorrt_form
    model = _qdq_model(weight_form="int8", shared=True)
    # a third reader of the shared activation: its Shape, as the Swin and MobileNet graphs have
    model.graph.node.append(helper.make_node("Shape", ["xd"], ["shape"], name="shape"))
    model.graph.output.append(helper.make_tensor_value_info("shape", TensorProto.INT64, None))
    before = check_qdq(model)
    assert any("lone DequantizeLinear" in p for p in before) and any("shared by 3 nodes" in p for p in before)
    onnx.save(model, str(tmp_path / "before.onnx"))
    fixed = tensorrt_form(model)
    assert check_qdq(fixed) == []
    initializers = {t.name for t in fixed.graph.initializer}
    assert not any(n.input[0] in initializers for n in fixed.graph.node if n.op_type == "DequantizeLinear")
    onnx.save(fixed, str(tmp_path / "after.onnx"))
    x = {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    outputs = [onnxruntime_session(tmp_path / name).run(None, x) for name in ("before.onnx", "after.onnx")]
    for a, b in zip(*outputs):
        assert np.array_equal(a, b)


def test_the_fp16_graph_keeps_softmax_and_layernorm_in_float32(tmp_path):
    from onnx import TensorProto, helper

    from edgederm.export.jetson_check import check_fp16
    from edgederm.export.tensorrt_export import convert_fp16
    scale = numpy_helper.from_array(np.ones(8, np.float32), "g")
    bias = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    w = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
         helper.make_node("LayerNormalization", ["m", "g", "b"], ["n"], name="ln", axis=-1),
         helper.make_node("Softmax", ["n"], ["y"], name="sm", axis=-1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [scale, bias, w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    fp16 = onnx.load(str(convert_fp16(tmp_path / "m.onnx", tmp_path / "m.fp16.onnx")))
    assert check_fp16(fp16) == []
    everything = onnx.load(str(tmp_path / "m.onnx"))
    from onnxruntime.transformers.float16 import convert_float_to_float16
    naive = convert_float_to_float16(everything, keep_io_types=True)        # LayerNorm and Softmax in FP16
    problems = check_fp16(naive)
    assert any("ln: LayerNormalization computes in float16" in p for p in problems), problems
    assert any("sm: Softmax computes in float16" in p for p in problems), problems
