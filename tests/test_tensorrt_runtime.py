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
from edgederm.runtime.engine import EngineError, batch_profiles, build_engine
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
