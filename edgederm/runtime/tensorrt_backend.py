"""TensorRT engine from a jetson bundle, on the device that built it.

An engine only runs on the TensorRT version and the GPU that built it; a
bundle whose recorded engine facts differ from this device (or cannot be read
here) is refused with the one-line fix (edgederm/runtime/device.py). At load,
the engine's inputs and outputs are checked against the manifest (names,
float32, N x 3 x S x S in, N x classes out): a graph from another bundle
would otherwise answer with shuffled tasks.

Memory is set up once: page-locked host buffers and device buffers for the
largest batch, bound to the execution contexts, one CUDA stream. A call
copies the inputs into the pinned buffers, then copy in, execute, copy out on
that stream and one synchronisation, so a latency measurement times the
model and its transfers, not allocations. The engine has one optimisation
profile for batch 1 (the clinic's case) and, when built for larger batches,
one tuned for the largest (edgederm/runtime/engine.py); each has its own execution
context. CUDA calls go through edgederm/runtime/cuda.py, every result and
every TensorRT call's result checked.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from edgederm import labels as L
from edgederm.errors import EdgeDermError
from edgederm.runtime.cuda import DEVICE_TO_HOST, HOST_TO_DEVICE, CudaRuntime
from edgederm.runtime.device import INSTALL_HINT, device_facts, engine_mismatch
from edgederm.runtime.predictor import BundleRunError, Predictor


def _profiles(engine_info: dict) -> list[tuple[int, int]]:
    """(smallest, largest) batch of each optimisation profile, in profile order; engines built before
    profiles were recorded have one, for 1..max_batch."""
    return [tuple(p) for p in engine_info.get("profiles", [[1, engine_info["max_batch"]]])]


class TensorRTPredictor(Predictor):
    backend = "tensorrt"

    def __init__(self, bundle: Path, manifest: dict, trt=None, cuda=None, facts: dict | None = None):
        """`trt`, `cuda` and `facts` are for tests: a fake tensorrt module, a fake CudaRuntime, device facts."""
        super().__init__(bundle, manifest)
        engine_info = manifest.get("engine")
        if not engine_info:
            raise EdgeDermError(f"{bundle}: no engine yet; build it on this device: "
                                f"edgederm engine build --bundle {bundle}")
        if trt is None:
            try:
                import tensorrt as trt
            except ImportError:
                raise EdgeDermError(INSTALL_HINT) from None
        differences = engine_mismatch(engine_info, device_facts(trt.__version__) if facts is None else facts)
        if differences:
            raise EdgeDermError(f"{bundle}: the engine cannot be trusted on this device ({'; '.join(differences)}); "
                                f"rebuild it here: edgederm engine build --bundle {bundle}")
        self.max_batch = engine_info["max_batch"]
        self.precision = engine_info.get("precision", self.precision)     # what the engine runs, not the graph
        settings = engine_info.get("settings")      # engines built before the settings were recorded have none
        if settings:
            self.float_precision = "f16" if settings["float_ops"] == "fp16" else "f32"    # OpenVINO's names
            self.runs_as = settings["label"]
        self.trt = trt
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
            (bundle / engine_info["file"]).read_bytes())
        if self.engine is None:
            raise EdgeDermError(f"{bundle}: TensorRT could not load {engine_info['file']}; rebuild it: "
                                f"edgederm engine build --bundle {bundle}")
        shapes = self._check_io(manifest)
        self.profiles = _profiles(engine_info)
        if len(self.profiles) != self.engine.num_optimization_profiles:
            raise EdgeDermError(f"{bundle}: the manifest lists {len(self.profiles)} optimisation profile(s), the "
                                f"engine has {self.engine.num_optimization_profiles}; rebuild it: "
                                f"edgederm engine build --bundle {bundle}")
        self.cuda = cuda or CudaRuntime()
        self.stream = None
        self.buffers: dict[str, tuple[np.ndarray, int, int]] = {}     # name -> (pinned host array, host, device)
        self.contexts = []
        try:
            self.stream = self.cuda.stream_create()
            for name, per_case in shapes.items():
                count = self.max_batch * int(np.prod(per_case))
                host, device = self.cuda.malloc_host(4 * count), None
                self.buffers[name] = (None, host, None)              # freed by close() if the next call fails
                device = self.cuda.malloc(4 * count)
                array = np.ctypeslib.as_array((ctypes.c_float * count).from_address(host))
                self.buffers[name] = (array.reshape(self.max_batch, *per_case), host, device)
            for index in range(len(self.profiles)):
                context = self.engine.create_execution_context()
                if context is None:
                    raise EdgeDermError(f"{bundle}: TensorRT could not create an execution context "
                                        "(out of GPU memory?)")
                if index and not context.set_optimization_profile_async(index, self.stream):
                    raise EdgeDermError(f"{bundle}: TensorRT refused optimisation profile {index}")
                for name, (_, _, device) in self.buffers.items():
                    if not context.set_tensor_address(name, device):
                        raise EdgeDermError(f"{bundle}: TensorRT refused the buffer of {name!r}")
                self.contexts.append(context)
        except BaseException:
            self.close()
            raise

    def _check_io(self, manifest: dict) -> dict[str, tuple[int, ...]]:
        """The engine's I/O must be the manifest's: the inputs, then one output per task, float32, with the
        per-case shapes the manifest gives. Returns name -> per-case shape."""
        trt, engine = self.trt, self.engine
        wanted = {i["name"]: tuple(i["shape"][1:]) for i in manifest["inputs"]}
        wanted.update({o["name"]: tuple(o["shape"][1:]) for o in manifest["outputs"]})
        inputs = {i["name"] for i in manifest["inputs"]}
        found = {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            found[name] = (is_input, engine.get_tensor_dtype(name), tuple(engine.get_tensor_shape(name))[1:])
        problems = []
        if set(found) != set(wanted):
            problems.append(f"tensors {sorted(found)} (manifest: {sorted(wanted)})")
        for name, (is_input, dtype, shape) in found.items():
            if name not in wanted:
                continue
            if is_input != (name in inputs):
                problems.append(f"{name} is an {'input' if is_input else 'output'} of the engine")
            if dtype != trt.DataType.FLOAT:
                problems.append(f"{name} is {dtype}, not float32")
            if shape != wanted[name]:
                problems.append(f"{name} is N x {' x '.join(map(str, shape))} "
                                f"(manifest: N x {' x '.join(map(str, wanted[name]))})")
        if problems:
            raise EdgeDermError(f"{self.bundle}: the engine does not match the manifest: {'; '.join(problems)}; "
                                f"rebuild it: edgederm engine build --bundle {self.bundle}")
        return {name: wanted[name] for name in [i["name"] for i in manifest["inputs"]] + list(L.TASK_KEYS)}

    def _context_for(self, n: int):
        for context, (low, high) in zip(self.contexts, self.profiles):
            if low <= n <= high:
                return context
        raise BundleRunError(f"{self.bundle}: no optimisation profile of the engine takes batch {n}")

    def _forward(self, *inputs: np.ndarray) -> np.ndarray:
        n, cuda, stream = len(inputs[0]), self.cuda, self.stream
        context = self._context_for(n)
        for name, array in zip(self.input_names, inputs):
            pinned, host, device = self.buffers[name]
            pinned[:n] = array
            cuda.copy_async(device, host, array.nbytes, HOST_TO_DEVICE, stream)
            if not context.set_input_shape(name, array.shape):
                raise BundleRunError(f"{self.bundle}: TensorRT refused input {name!r} of shape {array.shape}")
        if not context.execute_async_v3(stream):
            raise BundleRunError(f"{self.bundle}: TensorRT execution failed (see its log above)")
        for task in L.TASK_KEYS:
            pinned, host, device = self.buffers[task]
            cuda.copy_async(host, device, pinned[:n].nbytes, DEVICE_TO_HOST, stream)
        cuda.synchronize(stream)
        return np.concatenate([self.buffers[task][0][:n] for task in L.TASK_KEYS], axis=1)   # copies, not views

    def close(self) -> None:
        """Free the buffers and the stream (also on a failed load); safe to call twice."""
        for _, host, device in self.buffers.values():
            if device is not None:
                self.cuda.free(device)
            if host is not None:
                self.cuda.free_host(host)
        self.buffers = {}
        if self.stream is not None:
            self.cuda.stream_destroy(self.stream)
            self.stream = None

    def __del__(self):
        try:
            self.close()
        except Exception:      # at interpreter exit the CUDA library may already be gone
            pass


__all__ = ["TensorRTPredictor", "engine_mismatch"]
