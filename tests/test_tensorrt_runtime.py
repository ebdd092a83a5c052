"""The TensorRT path's error handling, without a GPU: the runtime predictor and
the engine build run against a fake `tensorrt` module and a fake CUDA runtime
that keeps "device memory" in Python. They check what can be checked here:
every failed CUDA or TensorRT call becomes a one-line error, an engine whose
I/O differs from the manifest or that was built on another device is refused,
buffers are allocated once and freed, a stale timing cache does not break the
build, and an FP16 engine of an INT8 bundle says it is FP16. What they cannot
check is TensorRT itself: that has never run here (no NVIDIA GPU)."""
import ctypes
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from edgederm import labels as L
from edgederm.errors import EdgeDermError
from edgederm.runtime.engine import BuildPlan, EngineError, batch_profiles, build_engine, onnx_node_of, trtexec_command
from edgederm.runtime.bundle import read_manifest, write_manifest
from edgederm.runtime.cuda import CudaError
from edgederm.runtime.device import engine_mismatch
from edgederm.runtime.tensorrt_backend import TensorRTPredictor
from tests.helpers import FACTS, FakeBuilderTrt


# --- fakes ---------------------------------------------------------------------------

class FakeCuda:
    """Device memory as bytearrays keyed by fake addresses; host memory is real (pinned = ctypes buffers)."""

    def __init__(self, fail: str | None = None):
        self.fail, self.device, self.host, self.next = fail, {}, {}, 0x1000
        self.calls = []

    def _maybe_fail(self, call):
        self.calls.append(call)
        if self.fail == call:
            raise CudaError(f"CUDA {call} failed: out of memory")

    def malloc(self, nbytes):
        self._maybe_fail("malloc")
        self.next += 0x100000
        self.device[self.next] = bytearray(nbytes)
        return self.next

    def malloc_host(self, nbytes):
        self._maybe_fail("malloc_host")
        buffer = ctypes.create_string_buffer(nbytes)
        self.host[ctypes.addressof(buffer)] = buffer
        return ctypes.addressof(buffer)

    def free(self, pointer):
        self.calls.append("free")
        del self.device[pointer]

    def free_host(self, pointer):
        self.calls.append("free_host")
        del self.host[pointer]

    def stream_create(self):
        self._maybe_fail("stream_create")
        return 7

    def stream_destroy(self, stream):
        self.calls.append("stream_destroy")

    def copy_async(self, destination, source, nbytes, kind, stream):
        self._maybe_fail("copy_async")
        if kind == 1:                                   # host to device
            self.device[destination][:nbytes] = ctypes.string_at(source, nbytes)
        else:
            ctypes.memmove(destination, bytes(self.device[source][:nbytes]), nbytes)

    def synchronize(self, stream):
        self._maybe_fail("synchronize")


def fake_trt(size: int, cuda: FakeCuda, io: dict | None = None, profiles: int = 2, refuse: str | None = None):
    """A tensorrt module whose engine has the manifest's I/O (or `io`: name -> (is_input, shape)) and whose
    execution writes, for each task, a probability row built from the mean of the dermoscopy input."""
    trt = SimpleNamespace(__version__="10.3.0", TensorIOMode=SimpleNamespace(INPUT="in", OUTPUT="out"),
                          DataType=SimpleNamespace(FLOAT="float32", HALF="float16"))
    io = io or {"clinical": (True, (-1, 3, size, size)), "dermoscopy": (True, (-1, 3, size, size)),
                **{t.key: (False, (-1, t.num_classes)) for t in L.TASKS}}

    class Context:
        def __init__(self):
            self.addresses, self.shapes = {}, {}

        def set_optimization_profile_async(self, index, stream):
            return refuse != "profile"

        def set_tensor_address(self, name, address):
            self.addresses[name] = address
            return refuse != "address"

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return refuse != "shape"

        def execute_async_v3(self, stream):
            if refuse == "execute":
                return False
            n = self.shapes["dermoscopy"][0]
            derm = np.frombuffer(bytes(cuda.device[self.addresses["dermoscopy"]]), np.float32)[:n * 3 * size * size]
            level = derm.reshape(n, -1).mean(1)
            for t in L.TASKS:
                row = np.stack([level + k for k in range(t.num_classes)], 1).astype(np.float32)
                cuda.device[self.addresses[t.key]][:row.nbytes] = row.tobytes()
            return True

    engine = SimpleNamespace(
        num_io_tensors=len(io), num_optimization_profiles=profiles,
        get_tensor_name=lambda i: list(io)[i],
        get_tensor_mode=lambda name: trt.TensorIOMode.INPUT if io[name][0] else trt.TensorIOMode.OUTPUT,
        get_tensor_dtype=lambda name: trt.DataType.FLOAT,
        get_tensor_shape=lambda name: io[name][1],
        create_execution_context=Context)
    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass
    trt.Logger = Logger
    trt.Runtime = lambda logger: SimpleNamespace(deserialize_cuda_engine=lambda data: engine)
    return trt


@pytest.fixture
def engine_bundle(bundles, tmp_path):
    """A copy of the jetson bundle with an engine recorded as built on FACTS (the engine file a stand-in)."""
    copy = shutil.copytree(bundles["jetson-int8"], tmp_path / "jetson")
    (copy / "model.engine").write_bytes(b"not a real engine")
    manifest = read_manifest(copy)
    manifest["engine"] = {"file": "model.engine", "precision": "int8", "max_batch": 8, "profiles": [[1, 1], [2, 8]],
                          **FACTS}
    return copy, manifest


def _predictor(engine_bundle, cuda=None, **trt_args):
    bundle, manifest = engine_bundle
    cuda = cuda or FakeCuda()
    size = manifest["preprocess"]["size"]
    return TensorRTPredictor(bundle, manifest, trt=fake_trt(size, cuda, **trt_args), cuda=cuda, facts=FACTS), cuda


# --- the runtime ---------------------------------------------------------------------

def test_buffers_are_allocated_once_and_results_come_back_per_task(engine_bundle):
    predictor, cuda = _predictor(engine_bundle)
    size = predictor.preprocess.size
    allocations = cuda.calls.count("malloc")
    assert allocations == 2 + len(L.TASKS) and cuda.calls.count("malloc_host") == allocations
    for n in (1, 3, 8, 1):
        x = np.random.default_rng(n).standard_normal((n, 3, size, size)).astype(np.float32)
        out = predictor.run(x, x)
        assert out.shape == (n, L.TOTAL_CLASSES)
        expected = x.reshape(n, -1).mean(1)
        assert np.allclose(out[:, L.TASK_SLICES["DIAG"]], np.stack([expected + k for k in range(5)], 1), atol=1e-5)
    assert cuda.calls.count("malloc") == allocations              # no allocation per call
    predictor.close()
    assert not cuda.device and not cuda.host and "stream_destroy" in cuda.calls
    predictor.close()                                              # twice is harmless


@pytest.mark.parametrize("fail", ["malloc", "malloc_host", "stream_create"])
def test_a_failed_allocation_is_one_line_and_frees_what_was_taken(engine_bundle, fail):
    cuda = FakeCuda(fail=fail)
    with pytest.raises(CudaError, match=f"CUDA {fail} failed: out of memory"):
        _predictor(engine_bundle, cuda)
    assert not cuda.device and not cuda.host


@pytest.mark.parametrize("fail, message", [("copy_async", "CUDA copy_async failed"),
                                           ("synchronize", "CUDA synchronize failed")])
def test_failed_copies_are_errors_not_garbage(engine_bundle, fail, message):
    predictor, cuda = _predictor(engine_bundle)
    cuda.fail = fail
    x = np.zeros((1, 3, predictor.preprocess.size, predictor.preprocess.size), np.float32)
    with pytest.raises(CudaError, match=message):
        predictor.run(x, x)


@pytest.mark.parametrize("refuse, message", [("shape", "refused input 'clinical'"), ("execute", "execution failed"),
                                             ("address", "refused the buffer"), ("profile", "refused optimisation")])
def test_tensorrt_refusals_are_checked(engine_bundle, refuse, message):
    try:
        predictor, _ = _predictor(engine_bundle, refuse=refuse)
    except EdgeDermError as e:                      # refused at load: buffers, profiles
        assert message in str(e)
        return
    x = np.zeros((2, 3, predictor.preprocess.size, predictor.preprocess.size), np.float32)
    with pytest.raises(EdgeDermError, match=message):
        predictor.run(x, x)


def test_an_engine_whose_io_differs_from_the_manifest_is_refused(engine_bundle):
    size = engine_bundle[1]["preprocess"]["size"]
    swapped = {"clinical": (True, (-1, 3, size, size)), "dermoscopy": (True, (-1, 3, size, size)),
               **{t.key: (False, (-1, t.num_classes)) for t in L.TASKS}}
    swapped["DIAG"] = (False, (-1, 3))
    with pytest.raises(EdgeDermError, match=r"does not match the manifest: DIAG is N x 3 \(manifest: N x 5\)"):
        _predictor(engine_bundle, io=swapped)
    del swapped["VS"]
    with pytest.raises(EdgeDermError, match="does not match the manifest: tensors"):
        _predictor(engine_bundle, io=swapped)
    with pytest.raises(EdgeDermError, match="2 optimisation profile"):
        _predictor(engine_bundle, profiles=1)


def test_an_engine_from_another_orin_or_with_unreadable_facts_is_refused(engine_bundle):
    bundle, manifest = engine_bundle
    size = manifest["preprocess"]["size"]
    nano = {**FACTS, "sm_count": 8, "board": "NVIDIA Jetson Orin Nano Developer Kit"}
    with pytest.raises(EdgeDermError, match="sm_count 16 \\(here 8\\).*rebuild it here: edgederm engine build"):
        TensorRTPredictor(bundle, manifest, trt=fake_trt(size, FakeCuda()), cuda=FakeCuda(), facts=nano)
    assert engine_mismatch(FACTS, {**FACTS, "gpu": None}) == ["gpu Orin (here unreadable)"]
    assert engine_mismatch(FACTS, {**FACTS, "l4t": "36.4.3"}) == []          # a patch update keeps the engine
    old = {k: v for k, v in FACTS.items() if k != "sm_count"}                # recorded before SM counts were
    assert engine_mismatch(old, FACTS) == ["sm_count not recorded at build"]


# --- the engine build ----------------------------------------------------------------

def test_a_timing_cache_from_another_gpu_starts_a_new_one(bundles, tmp_path):
    copy = shutil.copytree(bundles["jetson-int8"], tmp_path / "jetson")
    (copy / "timing.cache").write_bytes(b"from an AGX Orin with TensorRT 8.6")
    trt, lines = FakeBuilderTrt(cache_accepted=False), []
    build_engine(copy, trt=trt, facts=FACTS, log=lines.append)
    assert trt.cache_sets == [(b"from an AGX Orin with TensorRT 8.6", False), (b"", True)]
    assert any("from another GPU or TensorRT version: starting a new one" in line for line in lines)
    assert (copy / "timing.cache").read_bytes() == b"cache:10.3.0" and (copy / "model.engine").read_bytes() == b"ENGINE"
    engine = read_manifest(copy)["engine"]
    assert engine["profiles"] == [[1, 1], [2, 8]] and engine["sm_count"] == 16
    assert trt.profiles == [{i: (1, 1, 1) for i in ("clinical", "dermoscopy")},
                            {i: (2, 8, 8) for i in ("clinical", "dermoscopy")}]
    assert any("/usr/src/tensorrt/bin/trtexec" in line or "trtexec --onnx" in line for line in lines)


def test_a_failed_build_writes_nothing(bundles, tmp_path):
    copy = shutil.copytree(bundles["jetson-int8"], tmp_path / "jetson")
    before = (copy / "manifest.json").read_bytes()
    with pytest.raises(EngineError, match="could not build the engine"):
        build_engine(copy, trt=FakeBuilderTrt(build_ok=False), facts=FACTS, log=lambda m: None)
    assert not (copy / "model.engine").exists() and (copy / "manifest.json").read_bytes() == before
    with pytest.raises(EngineError, match="cannot read this device's sm_count"):
        build_engine(copy, trt=FakeBuilderTrt(), facts={**FACTS, "sm_count": None}, log=lambda m: None)


def test_an_fp16_engine_of_an_int8_bundle_runs_as_fp16(bundles, tmp_path):
    copy = shutil.copytree(bundles["jetson-int8"], tmp_path / "jetson")
    build_engine(copy, precision="fp16", max_batch=1, trt=FakeBuilderTrt(), facts=FACTS, log=lambda m: None)
    manifest = read_manifest(copy)
    assert manifest["precision"] == "int8" and manifest["engine"]["precision"] == "fp16"
    assert manifest["engine"]["onnx"] == "model.fp16.onnx" and manifest["engine"]["profiles"] == [[1, 1]]
    assert "metrics are those of the int8 graph" in manifest["engine"]["note"]
    cuda = FakeCuda()
    size = manifest["preprocess"]["size"]
    predictor = TensorRTPredictor(copy, manifest, trt=fake_trt(size, cuda, profiles=1), cuda=cuda, facts=FACTS)
    assert predictor.precision == "fp16"                           # what bench reports
    # and how the engine was built, in diagnose's bundle line and bench's precision column
    assert predictor.runs_as == "fp16 (float ops fp16)" and predictor.float_precision == "f16"
    assert predictor.name == "jetson (tensorrt, fp16 (float ops fp16))"
    from edgederm.benchmarks.report import _precision_cell
    assert _precision_cell({"precision": "fp16", "runs_as": predictor.runs_as, "float_precision": "f16",
                            "quantization": None}) == "fp16 (float ops fp16)"


def test_tensorrt_11_builds_int8_from_the_graph_typed_fp16_outside_qdq(bundles, tmp_path):
    copy = shutil.copytree(bundles["jetson-int8"], tmp_path / "jetson")
    assert read_manifest(copy)["int8_fp16"]["graph"] == "model.int8.fp16.onnx"
    trt = FakeBuilderTrt(version="11.4.0")
    build_engine(copy, trt=trt, facts={**FACTS, "tensorrt": "11.4.0"}, log=lambda m: None)
    assert trt.parsed == [str(copy / "model.int8.fp16.onnx")]
    engine = read_manifest(copy)["engine"]
    assert engine["onnx"] == "model.int8.fp16.onnx" and "int8_fp16" in engine["note"]
    trt = FakeBuilderTrt()                                   # TensorRT 10.3 takes INT8 + FP16 flags instead
    build_engine(copy, trt=trt, facts=FACTS, log=lambda m: None)
    assert trt.parsed == [str(copy / "model.int8.onnx")] and read_manifest(copy)["engine"]["onnx"] == "model.int8.onnx"
    # a bundle without the typed graph (it failed its gate) still builds on 11, and says what that costs
    manifest = read_manifest(copy)
    manifest["graphs"].remove("model.int8.fp16.onnx")
    (copy / "model.int8.fp16.onnx").unlink()
    write_manifest(copy, manifest)
    trt, lines = FakeBuilderTrt(version="11.4.0"), []
    build_engine(copy, trt=trt, facts={**FACTS, "tensorrt": "11.4.0"}, log=lines.append)
    assert trt.parsed == [str(copy / "model.int8.onnx")]
    assert any("runs the layers outside Q/DQ in FP32" in line for line in lines)


# --- what each TensorRT version is asked to run: the gate's record (runtime/engine.py) --------------------

GRAPHS = ["model.int8.onnx", "model.fp16.onnx", "model.int8.fp16.onnx"]
SOFTMAX = "/model/fusion/attn/Softmax"
BLOCK = "/model/derm_encoder/layers.2/blocks.1"
BLOCK_OPS = [f"{BLOCK}/attn/MatMul", f"{BLOCK}/attn/Add"]


def _record(gate: str, blocks: list[str] = (), operations: list[str] | None = None) -> dict:
    return {"gate": gate, "kept_in_float32": list(blocks), "fp32_operations": operations,
            "graph": None if gate == "failed" else "x"}


def test_tensorrt_10_runs_int8_float_regions_in_what_the_gate_judged():
    passed_whole = {"graphs": GRAPHS, "int8_fp16": _record("passed", [], [SOFTMAX])}
    passed_blocks = {"graphs": GRAPHS, "int8_fp16": _record("passed", [BLOCK], BLOCK_OPS + [SOFTMAX])}
    failed = {"graphs": GRAPHS[:2], "int8_fp16": _record("failed")}
    nothing_kept = {"graphs": GRAPHS, "int8_fp16": _record("passed", [], [])}
    # 1. the FP16-typed graph passed with no block FP32: INT8 + FP16, as before; what it always computes in FP32
    #    (LayerNorm, Softmax: export/tensorrt_export.FP16_OP_BLOCK_LIST) is pinned, so it is constrained
    assert BuildPlan.for_bundle("10.3.0", "int8", nothing_kept).builder_flags == ("INT8", "FP16")
    plan = BuildPlan.for_bundle("10.3.0", "int8", passed_whole)
    assert plan.builder_flags == ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS") and plan.fp32_operations == (SOFTMAX,)
    assert plan.onnx == "model.int8.onnx" and plan.label() == "int8 (float ops fp16)"
    # 2. passed with a block kept FP32: every node of it pinned, obeyed
    plan = BuildPlan.for_bundle("10.3.0", "int8", passed_blocks)
    assert plan.builder_flags == ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert plan.fp32_operations == (*BLOCK_OPS, SOFTMAX) and plan.label() == "int8 (float ops fp16, 1 block(s) pinned fp32)"
    # 3. failed, absent, or recorded before the FP32 nodes were: INT8 alone, the float regions FP32 as gated
    for manifest in (failed, {"graphs": GRAPHS[:2]}, {"graphs": GRAPHS, "int8_fp16": {"graph": "model.int8.fp16.onnx"}}):
        plan = BuildPlan.for_bundle("10.3.0", "int8", manifest)
        assert (plan.builder_flags, plan.fp32_operations, plan.label()) == (("INT8",), (), "int8 (float ops fp32)")
    assert BuildPlan.for_bundle("8.6.2", "int8", failed).explicit_batch_flag
    # TensorRT 11 keeps the typed graph's choice: no flags, no pins, the graph says it
    plan = BuildPlan.for_bundle("11.4.1", "int8", passed_blocks)
    assert (plan.builder_flags, plan.onnx, plan.fp32_operations) == ((), "model.int8.fp16.onnx", ())
    assert plan.label() == "int8 (float ops fp16, 1 block(s) fp32)"
    plan = BuildPlan.for_bundle("11.4.1", "int8", failed)
    assert (plan.onnx, plan.label()) == ("model.int8.onnx", "int8 (float ops fp32)")


def test_an_fp16_graph_the_gate_did_not_pass_needs_ungated():
    for gate, why in (("failed", "failed its gate on the valid split"), ("not gated", "was not gated")):
        manifest = {"graphs": GRAPHS, "fp16": {**_record(gate), "gate": gate}}
        for version in ("10.3.0", "11.4.1"):
            with pytest.raises(EngineError, match=f"bundle: its FP16 graph {why}.*build it anyway with --ungated"):
                BuildPlan.for_bundle(version, "fp16", manifest, "bundle")
        plan = BuildPlan.for_bundle("10.3.0", "fp16", manifest, ungated=True)
        assert not plan.gated and plan.label() == "fp16 (float ops fp16, not gated)"
    with pytest.raises(EngineError, match="was not gated"):        # exported before FP16 graphs were judged
        BuildPlan.for_bundle("10.3.0", "fp16", {"graphs": GRAPHS})
    plan = BuildPlan.for_bundle("10.3.0", "fp16", {"graphs": GRAPHS, "fp16": _record("passed", [BLOCK], BLOCK_OPS)})
    assert plan.builder_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS") and plan.fp32_operations == tuple(BLOCK_OPS)


def test_the_trtexec_line_carries_the_plan():
    shapes = {"clinical": ([1, 3, 64, 64], [1, 3, 64, 64], [8, 3, 64, 64])}
    failed = {"graphs": GRAPHS[:2], "int8_fp16": _record("failed")}
    line8 = trtexec_command(BuildPlan.for_bundle("8.6.2", "int8", failed), "m.onnx", "m.engine", "t.cache", 512, shapes)
    assert "--workspace=512" in line8 and "--maxShapes=clinical:8x3x64x64" in line8
    assert "--int8" in line8 and "--fp16" not in line8
    pinned = BuildPlan.for_bundle("10.3.0", "int8", {"graphs": GRAPHS, "int8_fp16": _record("passed", [BLOCK], BLOCK_OPS)})
    line10 = trtexec_command(pinned, "m.onnx", "m.engine", "t.cache", 512, shapes)
    assert "--int8 --fp16 --precisionConstraints=obey" in line10 and f"--layerPrecisions={BLOCK_OPS[0]}:fp32," in line10
    line11 = trtexec_command(BuildPlan.for_bundle("11.0.0", "int8", failed), "m.onnx", "m.engine", "t.cache", 512, shapes)
    assert "--memPoolSize=workspace:512M" in line11 and "--int8" not in line11 and "--fp16" not in line11


def test_a_layer_maps_to_the_onnx_node_it_was_parsed_from():
    nodes = {"/a/Conv", "/a/Conv_1", "/b/Add"}
    assert onnx_node_of("/a/Conv", nodes) == "/a/Conv" and onnx_node_of("/a/Conv_1", nodes) == "/a/Conv_1"
    assert onnx_node_of("/b/Add_17", nodes) == "/b/Add" and onnx_node_of("/b/Add_17_18", nodes) == "/b/Add"
    assert onnx_node_of("/c/Mul", nodes) is None and onnx_node_of("(Unnamed Layer* 3) [Constant]", nodes) is None


def test_tensorrt_10_pins_the_blocks_the_typed_graph_kept_fp32(bundles, tmp_path):
    """A real INT8 graph parsed into the fake network with TensorRT's layer naming: every layer of the kept block's
    nodes (a node's further layers too) runs FP32 with FP32 float outputs, and nothing else is pinned."""
    import onnx

    from edgederm.export.fp16_typing import typed_operations
    copy = shutil.copytree(bundles["jetson-int8"], tmp_path / "jetson")
    manifest = read_manifest(copy)
    graph = onnx.load(str(copy / "model.int8.onnx"))
    convs = [n.name for n in graph.graph.node if n.op_type == "Conv" and n.name.startswith("/model/")]
    block = "/".join(convs[-1].split("/")[:5])
    kept = [op for op in typed_operations(graph) if op.startswith(block + "/")]      # what the FP16 search keeps
    always = manifest["int8_fp16"]["fp32_operations"]          # what the typed graph never types (recorded at export)
    assert manifest["int8_fp16"]["gate"] == "passed" and set(always) <= {n.name for n in graph.graph.node}
    manifest["int8_fp16"].update(kept_in_float32=[block], fp32_operations=kept + always)
    write_manifest(copy, manifest)
    trt, lines = FakeBuilderTrt(), []
    build_engine(copy, trt=trt, facts=FACTS, log=lines.append)
    assert trt.flags == ["int8", "fp16", "obey"]
    pinned = trt.pinned()
    nodes = set(kept + always)
    layers = [layer for layer in trt.networks[-1].layers            # a Shape's layer has no float output to pin
              if onnx_node_of(layer.name, nodes) and "float32" in layer.dtypes]
    assert set(pinned) == {layer.name for layer in layers} and len(pinned) > len(kept)     # further layers too
    assert all(types == {0: "float32"} for types in pinned.values())
    assert "(Unnamed Layer* 0) [Constant]" not in pinned
    settings = read_manifest(copy)["engine"]["settings"]
    assert settings["label"] == "int8 (float ops fp16, 1 block(s) pinned fp32)" and settings["gate"] == "passed"
    assert settings["pinned"]["operations"] == len(nodes) and settings["pinned"]["no_layer"] == []
    assert any("building the engine, int8 (float ops fp16, 1 block(s) pinned fp32)," in line for line in lines)
    # a record whose nodes name no layer at all: refused, not built unpinned
    manifest = read_manifest(copy)
    manifest["int8_fp16"]["fp32_operations"] = ["/not/in/this/graph"]
    write_manifest(copy, manifest)
    with pytest.raises(EngineError, match="none of the 1 operations the gate kept FP32 names a TensorRT layer"):
        build_engine(copy, trt=FakeBuilderTrt(), facts=FACTS, log=lambda m: None)


def test_engine_build_of_a_failed_fp16_graph_is_one_line_unless_ungated(bundles, tmp_path):
    from typer.testing import CliRunner

    from edgederm.cli import app
    copy = shutil.copytree(bundles["jetson-int8"], tmp_path / "jetson")
    manifest = read_manifest(copy)
    manifest["fp16"]["gate"] = "failed"
    write_manifest(copy, manifest)
    before = (copy / "manifest.json").read_bytes()
    with pytest.raises(EngineError, match="its FP16 graph failed its gate on the valid split at export"):
        build_engine(copy, precision="fp16", trt=FakeBuilderTrt(), facts=FACTS, log=lambda m: None)
    assert not (copy / "model.engine").exists() and (copy / "manifest.json").read_bytes() == before
    trt = FakeBuilderTrt()
    build_engine(copy, precision="fp16", trt=trt, facts=FACTS, log=lambda m: None, ungated=True)
    settings = read_manifest(copy)["engine"]["settings"]
    assert settings["gate"] == "ungated" and settings["label"] == "fp16 (float ops fp16, not gated)"
    assert trt.flags[0] == "fp16"
    # the command: one line, before TensorRT is even needed
    result = CliRunner().invoke(app, ["engine", "build", "--bundle", str(copy), "--precision", "fp16"])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        f"error: {copy}: its FP16 graph failed its gate on the valid split at export; re-export with --data, or "
        "build it anyway with --ungated (its engine is then marked not gated)"]


def test_batch_profiles():
    assert batch_profiles(1) == [(1, 1, 1)]
    assert batch_profiles(8) == [(1, 1, 1), (2, 8, 8)]
    assert json.dumps(batch_profiles(4))


def test_bench_times_an_engine_through_buffers_allocated_once(engine_bundle, monkeypatch):
    """`edgederm bench`'s TensorRT row: the bundle's engine loaded as the device would (checksums, facts),
    timed at two batch sizes on the predictor's one stream, with no allocation inside the timed calls."""
    import sys

    from edgederm.benchmarks.bench import run_bench
    from edgederm.scoring.gate import GateSettings
    from edgederm.runtime import tensorrt_backend
    bundle, manifest = engine_bundle
    write_manifest(bundle, manifest)             # the engine is now one of the bundle's checked files
    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt(manifest["preprocess"]["size"], cuda))
    monkeypatch.setattr(tensorrt_backend, "CudaRuntime", lambda: cuda)
    monkeypatch.setattr(tensorrt_backend, "device_facts", lambda version: FACTS)
    result = run_bench([str(bundle)], reference=None, data=None, split="test", batch_sizes=[1, 4], warmup=2,
                       runs=5, gate=GateSettings())
    row = result["variants"][0]
    assert row["status"] == "ok", row.get("error")
    assert (row["backend"], row["precision"]) == ("tensorrt", "int8")
    assert [(t["batch"], t["runs"]) for t in row["latency"]] == [(1, 5), (4, 5)]
    assert cuda.calls.count("malloc") == 2 + len(L.TASKS)                     # allocated once, at load
    assert cuda.calls.count("synchronize") >= 2 * (2 + 5)                      # one stream sync per call


def test_the_device_check_builds_runs_and_gates_against_the_fp32_onnx_bundle(bundles, synthetic_release, tmp_path,
                                                                             monkeypatch, capsys):
    """benchmarks/dev/tensorrt_check.py against one fake tensorrt module that builds (FakeBuilderTrt) and runs
    (fake_trt): the engine is built with the gate's settings, run on the test split and gated against the onnx
    FP32 bundle of the same weights. The fake engine's answers are not the model's, so the verdict is a failure,
    reported as one line: the check reports what ran, it does not assume a pass."""
    import importlib.util
    import sys
    from pathlib import Path

    from edgederm.runtime import tensorrt_backend
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "dev" / "tensorrt_check.py"
    spec = importlib.util.spec_from_file_location("tensorrt_check", script)
    tensorrt_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tensorrt_check)
    copy = shutil.copytree(bundles["jetson-int8"], tmp_path / "jetson")
    cuda = FakeCuda()
    trt = FakeBuilderTrt()
    for name, value in vars(fake_trt(read_manifest(copy)["preprocess"]["size"], cuda)).items():
        if name not in ("__version__",):
            setattr(trt, name, value)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tensorrt_backend, "CudaRuntime", lambda: cuda)
    monkeypatch.setattr(tensorrt_backend, "device_facts", lambda version: FACTS)
    monkeypatch.setattr("edgederm.runtime.engine.device_facts", lambda version: FACTS)
    code = tensorrt_check.main(["--bundle", str(copy), "--reference", str(bundles["onnx-fp32"]),
                                "--data", str(synthetic_release), "--out", str(tmp_path / "check.json")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 1 and trt.parsed == [str(copy / "model.int8.onnx")]
    assert lines[0].startswith(f"jetson: fail against {bundles['onnx-fp32'].name} on test (")
    assert "diagnosis flips" in lines[0] and len([line for line in lines if line.startswith("jetson")]) == 1
    assert lines[-1].startswith('engine settings: {"label": "int8 (float ops fp16')
    report = json.loads((tmp_path / "check.json").read_text())
    row = report["variants"][-1]
    assert (row["backend"], row["verdict"], row["runs_as"]) == ("tensorrt", "fail", read_manifest(copy)["engine"]["settings"]["label"])


def test_bench_reads_an_ungated_engine_as_not_gated_and_pairs_rows_by_weights_and_views():
    """apply_gate on rows as bench_variant makes them: an engine built --ungated is measured (its gate figures are
    kept) but never approved; a row of other weights, with no FP32 bundle of its own beside it, is not compared."""
    from edgederm.benchmarks.bench import apply_gate
    from edgederm.scoring.gate import GateSettings
    rng = np.random.default_rng(0)
    cases = 60
    labels = np.stack([rng.integers(0, t.num_classes, cases) for t in L.TASKS], 1)
    probabilities = np.concatenate([rng.dirichlet(np.ones(t.num_classes), cases) for t in L.TASKS], 1)

    def row(name, precision, weights="a" * 64, ungated=False):
        return {"name": name, "status": "ok", "precision": precision, "target": "jetson", "backend": "tensorrt",
                "weights_sha256": weights, "tta": None, "latency": [{"mean_ms": 1.0}], "engine_ungated": ungated,
                "_probabilities": probabilities.copy()}
    rows = [row("fp32", "fp32"), row("int8", "int8"), row("fp16-ungated", "fp16", ungated=True),
            row("other-weights", "int8", weights="b" * 64)]
    rows[0]["target"] = "onnx"
    apply_gate(rows, "fp32", GateSettings(resamples=200), labels, [str(i) for i in range(cases)])
    verdicts = {r["name"]: r["verdict"] for r in rows}
    assert verdicts == {"fp32": "reference", "int8": "pass", "fp16-ungated": "not gated",
                        "other-weights": "not comparable"}
    assert rows[2]["gate"]["verdict"] == "pass" and rows[2]["gated_against"] == "fp32"       # measured all the same
    assert rows[3]["not_comparable"].startswith("not comparable with the reference: it needs an FP32 bundle of the "
                                                "same weights (bbbbbbbb) with no TTA views in this bench")
