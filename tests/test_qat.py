"""Quantization-aware fine-tuning distilled from the FP32 model (export/qat.py), on the session's trained
tiny run: the teacher stays frozen, the student moves toward it, its Q/DQ graph has TensorRT's form, and
the INT8 search tries it after the blocks in float and refuses what it must."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgederm.calibration.selection import build_calibration_set
from edgederm.cli import app
from edgederm.data.release import read_release
from edgederm.export import int8_gate, qat
from edgederm.export.exporter import ExportRequest, export
from edgederm.export.jetson_check import check_graph
from edgederm.export.onnx_export import run_torch
from edgederm.export.openvino_export import has_attention
from edgederm.models.io import load_model
from edgederm.runtime.bundle import sha256_file
from tests.helpers import interrupted_qat, plain_ptq_refused, write_indexes

# A few steps at a rate that moves the 64-px toy model measurably: the subject is the mechanism.
TEST_SETTINGS = qat.QatSettings(epochs=4, lr=1e-5, batch_size=4)


def _disagreement(student, teacher, inputs) -> float:
    """Mean |P_FI student - P_FI teacher| over the cases: what the gate's decisions are read from."""
    return float(np.abs(run_torch(student, *inputs) - run_torch(teacher, *inputs)).mean())


def test_distillation_freezes_the_teacher_and_moves_the_student_toward_it(trained_run, synthetic_release):
    weights = trained_run / "model.safetensors"
    teacher = load_model(weights).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    release = read_release(synthetic_release)
    calib = build_calibration_set(release, teacher.cfg.preprocess(), "train", None, 0, teacher.input_names)
    student = qat.quantized_student(teacher, calib, has_attention(teacher))
    weights_of = {name: p for name, p in student.named_parameters() if "nncf" not in name}
    assert weights_of.keys() == dict(teacher.named_parameters()).keys()
    assert all(p.requires_grad for p in weights_of.values())           # the copy trains, not the teacher
    train = calib.inputs                                               # the train split's cases
    start = _disagreement(student, teacher, train)
    assert start > 0                                                   # quantization changed something
    job = qat.QatJob(weights, synthetic_release, trained_run, TEST_SETTINGS)
    loader = qat._train_loader(job, teacher.cfg)
    monitor, epochs, lines = qat.Monitor.of(job, teacher), [], []
    history = qat.distill(student, teacher, loader, TEST_SETTINGS, log=lines.append, monitor=monitor, epochs=epochs)
    assert len(history) == TEST_SETTINGS.epochs and history[-1] < history[0]
    assert _disagreement(student, teacher, train) < start
    # every epoch measured on fixed train and valid cases; the time it would take said after the first steps
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4] and [e["loss"] for e in epochs] == history
    assert monitor.describe() == {"train": min(qat.MONITOR_CASES, len(calib)), "valid": 8}
    assert epochs[-1]["train"]["mean_abs_dp"] < _monitored_start(monitor, teacher, calib, has_attention(teacher))
    assert any(line.startswith("  QAT: about ") and "min for 4 epoch(s)" in line for line in lines)
    assert "; valid: flips" in lines[-1]
    assert all(torch.equal(v, before_teacher[k]) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())


def _monitored_start(monitor, teacher, calib, transformer) -> float:
    """The monitor's train disagreement of a freshly quantized student (before any step)."""
    return monitor.measure(qat.quantized_student(teacher, calib, transformer))["train"]["mean_abs_dp"]


def test_a_time_budget_stops_qat_between_epochs_and_scales_can_have_their_own_rate(trained_run, synthetic_release):
    weights = trained_run / "model.safetensors"
    teacher = load_model(weights).eval()
    calib = build_calibration_set(read_release(synthetic_release), teacher.cfg.preprocess(), "train", None, 0,
                                  teacher.input_names)
    student = qat.quantized_student(teacher, calib, has_attention(teacher))
    settings = qat.QatSettings(epochs=3, lr=1e-5, batch_size=4, minutes=1e-4, scale_lr=1e-3)
    optimizer = qat._optimizer(student, settings)
    from nncf.torch.function_hook.wrapper import get_hook_storage
    scales = {id(p) for p in get_hook_storage(student).parameters() if p.requires_grad}   # scales, not bit counts
    assert [g["lr"] for g in optimizer.param_groups] == [1e-5, 1e-3] and scales
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == scales
    assert not scales & {id(p) for p in optimizer.param_groups[0]["params"]}
    loader = qat._train_loader(qat.QatJob(weights, synthetic_release, trained_run, settings), teacher.cfg)
    lines = []
    history = qat.distill(student, teacher, loader, settings, log=lines.append)
    assert len(history) == 1               # a 6 ms budget: the first epoch runs, no second one starts
    assert any("stopped after 1 of 3 epoch(s): another would end past the 0.0001-minute budget" in line for line in lines)


def test_qat_graphs_are_trained_once_and_the_qdq_graph_has_tensorrts_form(trained_run, synthetic_release, tmp_path):
    teacher = load_model(trained_run / "model.safetensors").eval()
    release = read_release(synthetic_release)
    calib = build_calibration_set(release, teacher.cfg.preprocess(), "train", None, 0, teacher.input_names)
    job = qat.QatJob(trained_run / "model.safetensors", synthetic_release, tmp_path / "qat", TEST_SETTINGS)
    lines = []
    graphs = qat.qat_graphs(job, calib, has_attention(teacher), lines.append)
    assert check_graph(graphs.qdq_onnx) == []
    import onnx
    ops = {n.op_type for n in onnx.load(str(graphs.qdq_onnx)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    record = graphs.record
    assert record["split"] == "train" and record["cases"] == len(release.split("train"))
    assert record["teacher_sha256"] == sha256_file(trained_run / "model.safetensors")
    assert record["settings"]["epochs"] == 4 and len(record["loss_per_epoch"]) == 4 and record["minutes"] >= 0
    # where it started (the calibrated student) and where it ended, on the same monitored cases
    assert record["start"]["train"]["mean_abs_dp"] > record["epochs"][-1]["train"]["mean_abs_dp"]
    assert any(line.startswith("  QAT start: train: flips ") for line in lines)
    assert record["in_float"] == ["clinical_encoder"]       # the tiny preset's MobileNetV3-Small: 3 % of FLOPs
    import openvino as ov
    model = ov.Core().read_model(str(graphs.openvino_xml))
    assert [p.get_any_name() for p in model.inputs] == list(teacher.input_names)
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    # every size but the batch fixed, as in the FP32 graph: with every size dynamic, TF-style "same" padding
    # stayed shape arithmetic and Pad at run time, and OpenVINO ran those convolutions in float
    size = teacher.cfg.img_size
    assert [str(p.get_partial_shape()) for p in model.inputs] == [f"[?,3,{size},{size}]"] * 2
    compiled = ov.Core().compile_model(model.clone(), "CPU")
    ran = {op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops()}
    assert not ran & {"ShapeOf", "Pad"}
    # a second target of the same pass reads what the first trained
    again = qat.qat_graphs(job, calib, has_attention(teacher), lines.append)
    assert again.record == record and "reusing the student" in lines[-1]
    assert json.dumps(record)


def test_the_light_encoder_stays_in_float_and_a_heavy_one_is_quantized(trained_run):
    model = load_model(trained_run / "model.safetensors")
    assert qat.light_encoders(model, 0.1) == ("clinical_encoder",)
    assert qat.light_encoders(model, 0.01) == ()


def test_the_search_tries_qat_after_plain_ptq_and_refuses_a_graph_tensorrt_would_not_take(trained_run, synthetic_release,
                                                                              tmp_path):
    """An impossible margin: plain PTQ fails, QAT is tried next; its graph, reported with a problem by the
    TensorRT check, is refused whatever its score, and the blocks in float are tried after it."""
    from edgederm.data.inputs import load_arrays
    from edgederm.scoring.gate import GateSettings
    from edgederm.export.onnx_export import export_onnx
    from edgederm.export.onnxruntime_scoring import onnxruntime_session, run_onnx
    from edgederm.export.tensorrt_export import QdqQuantizer
    model = load_model(trained_run / "model.safetensors").eval()
    release = read_release(synthetic_release)
    preprocess = model.cfg.preprocess()
    calib = build_calibration_set(release, preprocess, count=8)
    cases = release.split("valid")
    inputs = load_arrays(cases, preprocess)
    onnx_fp32 = export_onnx(model, tmp_path / "model.onnx")
    valid = int8_gate.ValidSplit(inputs, np.array([c.labels for c in cases]), [c.case_id for c in cases],
                                 run_torch(model, *inputs), GateSettings(max_auc_drop=-100.0))
    asked = []

    def student(out):
        asked.append(out)
        out.write_bytes(onnx_fp32.read_bytes())      # a graph that runs, with a problem reported for it
        return ["Conv 'x': not quantized"], {"tool": "test"}

    graph, attempts, _ = int8_gate.search_jetson(
        QdqQuantizer(onnx_fp32, calib, tmp_path / "q"), tmp_path / "int8.onnx",
        lambda g: (lambda *x, s=onnxruntime_session(g): run_onnx(s, *x)), valid, lambda m: None, qat=student)
    assert graph is None and len(asked) == 1
    assert attempts[0].method == "plain PTQ (symmetric Q/DQ)" and attempts[1].method == int8_gate.METHOD_QAT
    assert all(a.method.endswith("block(s) in float") for a in attempts[2:]) and len(attempts) > 2
    assert all(not a.passed for a in attempts)
    assert attempts[1].result["reasons"][0].startswith("not in TensorRT's form (1 problem(s), first: Conv 'x'")
    assert attempts[1].describe()["qat"] == {"tool": "test"}
    assert "QAT distilled from FP32: not in TensorRT's form" in str(int8_gate.refuse(attempts, valid, "jetson"))


def test_qat_needs_a_training_run_a_train_split_and_sane_settings(trained_run, release_copy, tmp_path):
    runner = CliRunner()
    out = tmp_path / "exports"
    base = ["export", "--run", str(trained_run), "--target", "openvino", "--out", str(out)]
    cases = [
        ([*base, "--precision", "int8", "--data", str(release_copy), "--qat-epochs", "0"],
         "--qat-epochs 0: at least 1 (use --no-qat to skip QAT)"),
        ([*base, "--precision", "fp32", "--qat-epochs", "2"], "apply to --precision int8 only"),
        ([*base, "--precision", "int8", "--data", str(release_copy), "--qat-minutes", "0"],
         "--qat-minutes 0: a budget must be positive"),
        ([*base, "--precision", "fp32", "--qat-minutes", "5"], "apply to --precision int8 only"),
    ]
    [bundle] = export(ExportRequest(run=trained_run, target="torch", out=tmp_path / "bundles"), log=lambda m: None)
    cases.append((["export", "--run", str(bundle), *base[3:], "--precision", "int8", "--data", str(release_copy)],
                  "an exported bundle, not a training run: quantization-aware fine-tuning trains from the run"))
    rows = len(read_release(release_copy).cases)
    splits = read_release(release_copy)
    write_indexes(release_copy, {"train": [], "valid": [c.row for c in splits.split("valid")],
                                 "test": [c.row for c in splits.split("test")]})
    assert rows and not read_release(release_copy).split("train")
    cases.append(([*base, "--precision", "int8", "--data", str(release_copy)],
                  "the train split is empty: quantization-aware fine-tuning trains on it"))
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and result.output.count("\n") == 1, result.output
        assert not out.exists() or list(out.iterdir()) == []


def test_interrupting_qat_leaves_no_bundle(trained_run, synthetic_release, tmp_path, monkeypatch):
    import edgederm.export.exporter as exporter
    monkeypatch.setitem(exporter.FORMAT_FUNCTIONS, "openvino", interrupted_qat)
    with pytest.raises(KeyboardInterrupt):
        export(ExportRequest(run=trained_run, target="openvino", precisions="int8", data=synthetic_release,
                             out=tmp_path, max_auc_drop=-100), log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_the_qat_attempt_records_how_its_student_was_trained(trained_run, synthetic_release, tmp_path, monkeypatch):
    """Plain PTQ refused (by the test), the search's next attempt is QAT: one student for both targets of the
    pass, recorded in both manifests with how it was trained and from which teacher. (Whether it passes on
    the toy model's 8 valid cases is not the subject: its one melanoma decides the melanoma check.)"""
    from edgederm.export import exporter
    from edgederm.export.exporter import export_many
    from edgederm.runtime.bundle import read_manifest
    for name in ("openvino", "jetson"):
        monkeypatch.setitem(exporter.FORMAT_FUNCTIONS, name, plain_ptq_refused)
    lines = []
    written = export_many([ExportRequest(run=trained_run, target=target, precisions="int8", data=synthetic_release,
                                         out=tmp_path, max_auc_drop=50, max_flip_rate=100, qat_epochs=2)
                           for target in ("openvino", "jetson")], log=lines.append)
    assert sum("QAT: 2 epoch(s)" in line for line in lines) == 1          # trained once for both targets
    records = []
    for bundle in written:
        manifest = read_manifest(bundle)
        attempts = manifest["int8_gate"]["attempts"]
        assert attempts[0]["reasons"][0] == "refused by the test" and attempts[1]["method"] == int8_gate.METHOD_QAT
        assert "plain PTQ failed the gate on valid (refused by the test)" in attempts[1]["why"]
        assert attempts[1]["kept_in_float"] == ["clinical_encoder"]
        record = attempts[1]["qat"]
        assert record["settings"]["epochs"] == 2 and record["settings"]["fused_weight"] == 10.0
        assert record["teacher_sha256"] == sha256_file(trained_run / "model.safetensors") and record["minutes"] > 0
        assert record["split"] == "train" and len(record["loss_per_epoch"]) == 2
        assert [e["epoch"] for e in record["epochs"]] == [1, 2] and set(record["monitored"]) == {"train", "valid"}
        assert {"diagnosis_flip_percent", "mean_abs_dp"} == set(record["epochs"][-1]["valid"])
        chosen = attempts[manifest["int8_gate"]["chosen"]]
        assert manifest["quantization"]["method"] == chosen["method"]
        if chosen["method"] == int8_gate.METHOD_QAT:
            assert manifest["quantization"]["kept_in_float"] == ["clinical_encoder"]
        records.append(record)
    assert records[0] == records[1]


def test_the_overflow_fix_halves_the_weight_ranges_of_the_layers_it_names(trained_run, synthetic_release):
    """NNCF's overflow fix (7-bit weights) doubles a weight quantizer's scale (half its levels) and leaves activations
    alone: on every layer with "enable", on the first layer(s) only with the default, nowhere with "disable"."""
    from nncf.torch.function_hook.wrapper import get_hook_storage
    teacher = load_model(trained_run / "model.safetensors").eval()
    calib = build_calibration_set(read_release(synthetic_release), teacher.cfg.preprocess(), "train", None, 0,
                                  teacher.input_names)
    # "auto": every layer where int8 products are summed in int16 (AVX2), the first where VNNI/AMX sum in int32
    assert qat.QatSettings().overflow_fix == "enable"
    assert qat.overflow_fix_for("auto", {"avx2", "fma"}) == "enable"
    assert qat.overflow_fix_for("auto", {"avx2", "avx512_vnni"}) == qat.overflow_fix_for("auto", {"amx_int8"}) \
        == "first_layer_only"
    assert qat.overflow_fix_for("disable", {"avx2"}) == "disable"

    def scales(fix: str) -> dict[str, torch.Tensor]:
        student = qat.quantized_student(teacher, calib, has_attention(teacher), overflow_fix=fix)
        return {name: q.scale.detach().clone() for name, q in get_hook_storage(student).named_hooks()}

    plain = scales("disable")

    def widened(fix: str) -> set[str]:
        found = set()
        for name, scale in scales(fix).items():
            ratio = scale / plain[name]
            if torch.allclose(ratio, torch.full_like(ratio, 2.0), rtol=0.01):
                found.add(name)
            else:
                assert torch.allclose(ratio, torch.ones_like(ratio)), name     # nothing else moves
        return found

    everywhere, first = widened("enable"), widened("first_layer_only")
    assert len(everywhere) > 10 and all(name.endswith("__1.0") for name in everywhere)    # port 1: the weights
    assert first and first < everywhere
    with pytest.raises(Exception, match="overflow fix 'sometimes'"):
        qat.QatSettings(overflow_fix="sometimes")


def test_unsigned_activations_are_kept_only_when_asked(trained_run, synthetic_release):
    """`signed` (the default, TensorRT's form) turns every quantizer signed; `signed=False` keeps NNCF's unsigned
    ranges for activations that are never negative (one more bit for them: an OpenVINO-only student)."""
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import SymmetricQuantizer
    teacher = load_model(trained_run / "model.safetensors").eval()
    calib = build_calibration_set(read_release(synthetic_release), teacher.cfg.preprocess(), "train", None, 0,
                                  teacher.input_names)

    def unsigned(signed: bool) -> int:
        student = qat.quantized_student(teacher, calib, has_attention(teacher), signed=signed)
        return sum(isinstance(q, SymmetricQuantizer) and not q.signed for _, q in get_hook_storage(student).named_hooks())

    assert unsigned(True) == 0 and unsigned(False) > 0
    assert qat.QatSettings().signed


def test_mixup_distillation_shows_teacher_and_student_the_same_mixed_pair(trained_run, synthetic_release):
    """With `mix_alpha`, each batch is mixed with its reverse before either network sees it: both get the same
    tensors, and they are not the loader's."""
    weights = trained_run / "model.safetensors"
    teacher = load_model(weights).eval()
    calib = build_calibration_set(read_release(synthetic_release), teacher.cfg.preprocess(), "train", None, 0,
                                  teacher.input_names)
    student = qat.quantized_student(teacher, calib, has_attention(teacher))
    settings = qat.QatSettings(epochs=1, lr=1e-5, batch_size=4, mix_alpha=1.0)
    loader = qat._train_loader(qat.QatJob(weights, synthetic_release, trained_run, settings), teacher.cfg)
    first_batch = [x.clone() for x in next(iter(loader))[:-1]]
    seen = {"teacher": [], "student": []}
    teacher.register_forward_pre_hook(lambda m, args: seen["teacher"].append([a.clone() for a in args]))
    student.register_forward_pre_hook(lambda m, args: seen["student"].append([a.clone() for a in args]))
    qat.distill(student, teacher, loader, settings, log=lambda line: None)
    assert len(seen["teacher"]) == len(seen["student"]) == len(loader)
    assert all(torch.equal(t, s) for ts, ss in zip(seen["teacher"], seen["student"]) for t, s in zip(ts, ss))
    assert not torch.equal(seen["teacher"][0][0], first_batch[0])          # mixed, not the photos as loaded
    assert seen["teacher"][0][0].shape == first_batch[0].shape
    with pytest.raises(Exception, match="mixup alpha -1"):
        qat.QatSettings(mix_alpha=-1)
    with pytest.raises(Exception, match="a task loss needs mix_alpha 0"):
        qat.QatSettings(mix_alpha=1.0, task_weight=0.1)


def test_the_score_term_is_the_squared_difference_of_the_devices_seven_point_reading():
    """`seven_point_score` is the calibrated expected score the device reads (edgederm.scoring.calibration), and
    `score_weight` adds exactly its mean squared student-teacher difference to the loss."""
    from edgederm import labels as L
    from edgederm.scoring.calibration import apply_temperatures, expected_seven_point_score
    rng = np.random.default_rng(0)
    temperatures = {"PN": 1.3, "STR": 0.8, "DaG": 1.5}

    def outputs() -> dict:
        return {"fusion": torch.from_numpy(rng.normal(size=(6, sum(L.NUM_CLASSES))).astype(np.float32))}

    student, teacher = outputs(), outputs()
    from edgederm.models.heads import fused_probabilities
    weights = torch.tensor([1.0])          # P_FI of one branch: its own probabilities
    p_student = fused_probabilities(student, weights, ("fusion",))
    expected = expected_seven_point_score(apply_temperatures(p_student.numpy().astype(np.float64), temperatures))
    assert np.allclose(qat.seven_point_score(p_student, temperatures).numpy(), expected, atol=1e-5)
    targets = torch.zeros(6, len(L.TASK_KEYS), dtype=torch.long)
    plain = qat.QatSettings()
    scored = qat.QatSettings(score_weight=5.0)
    p_teacher = fused_probabilities(teacher, weights, ("fusion",))
    gap = (qat.seven_point_score(p_student, temperatures) - qat.seven_point_score(p_teacher, temperatures)).pow(2).mean()
    added = (qat.distillation_loss(student, teacher, targets, weights, scored, ("fusion",), temperatures)
             - qat.distillation_loss(student, teacher, targets, weights, plain, ("fusion",), temperatures))
    assert gap > 0 and torch.allclose(added, 5.0 * gap, rtol=1e-4)
