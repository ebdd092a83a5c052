"""TensorRT engine from a jetson bundle, on the device that built it.

An engine only runs on the GPU and TensorRT version that built it; a bundle
whose recorded engine facts differ from this device is refused with the
one-line fix. Device memory goes through the CUDA runtime by ctypes: a Jetson
has numpy, OpenCV and TensorRT, and no pycuda or torch.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from edgederm import labels as L
from edgederm.errors import EdgeDermError
from edgederm.runtime.device import INSTALL_HINT, device_facts, engine_mismatch
from edgederm.runtime.predictor import Predictor

_H2D, _D2H = 1, 2


def _cudart() -> ctypes.CDLL:
    for name in ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so.10.2"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise EdgeDermError("the CUDA runtime (libcudart) is not found: TensorRT engines need an NVIDIA GPU")


class TensorRTPredictor(Predictor):
    backend = "tensorrt"

    def __init__(self, bundle: Path, manifest: dict):
        super().__init__(bundle, manifest)
        engine_info = manifest.get("engine")
        if not engine_info:
            raise EdgeDermError(f"{bundle}: no engine yet; build it on this device: "
                                f"edgederm engine build --bundle {bundle}")
        try:
            import tensorrt as trt
        except ImportError:
            raise EdgeDermError(INSTALL_HINT) from None
        differences = engine_mismatch(engine_info, device_facts(trt.__version__))
        if differences:
            raise EdgeDermError(f"{bundle}: the engine was built for {'; '.join(differences)}; rebuild it here: "
                                f"edgederm engine build --bundle {bundle}")
        self.max_batch = engine_info["max_batch"]
        self.trt, self.cuda = trt, _cudart()
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine((bundle / engine_info["file"]).read_bytes())
        if self.engine is None:
            raise EdgeDermError(f"{bundle}: TensorRT could not load {engine_info['file']}; rebuild it: "
                                f"edgederm engine build --bundle {bundle}")
        self.context = self.engine.create_execution_context()
        self.stream = ctypes.c_void_p()
        self.cuda.cudaStreamCreate(ctypes.byref(self.stream))

    def _device_buffer(self, nbytes: int) -> ctypes.c_void_p:
        pointer = ctypes.c_void_p()
        if self.cuda.cudaMalloc(ctypes.byref(pointer), ctypes.c_size_t(nbytes)) != 0:
            raise EdgeDermError(f"{self.bundle}: cudaMalloc of {nbytes} bytes failed")
        return pointer

    def _forward(self, clinical: np.ndarray, dermoscopy: np.ndarray) -> np.ndarray:
        n, buffers, outputs = len(clinical), [], {}
        try:
            for name, array in (("clinical", clinical), ("dermoscopy", dermoscopy)):
                buffer = self._device_buffer(array.nbytes)
                buffers.append(buffer)
                self.cuda.cudaMemcpy(buffer, array.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(array.nbytes), _H2D)
                self.context.set_input_shape(name, array.shape)
                self.context.set_tensor_address(name, buffer.value)
            for task in L.TASKS:
                host = np.empty((n, task.num_classes), np.float32)
                buffer = self._device_buffer(host.nbytes)
                buffers.append(buffer)
                self.context.set_tensor_address(task.key, buffer.value)
                outputs[task.key] = (host, buffer)
            if not self.context.execute_async_v3(self.stream.value):
                raise EdgeDermError(f"{self.bundle}: TensorRT execution failed")
            self.cuda.cudaStreamSynchronize(self.stream)
            for host, buffer in outputs.values():
                self.cuda.cudaMemcpy(host.ctypes.data_as(ctypes.c_void_p), buffer, ctypes.c_size_t(host.nbytes), _D2H)
            return np.concatenate([outputs[t][0] for t in L.TASK_KEYS], axis=1)
        finally:
            for buffer in buffers:
                self.cuda.cudaFree(buffer)
