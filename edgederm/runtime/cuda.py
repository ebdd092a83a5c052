"""The few CUDA runtime calls the TensorRT predictor makes, behind one small class.

ctypes over libcudart: a Jetson has numpy, OpenCV and TensorRT, no pycuda and
no torch. Every call's return code is checked and turned into a CudaError
that names the call and CUDA's own error string, because an unchecked failed
copy leaves the engine reading garbage and answering anyway. Tests replace
this class with a fake to reach every error path without a GPU
(tests/test_tensorrt_runtime.py).
"""
from __future__ import annotations

import ctypes

from edgederm.errors import EdgeDermError

HOST_TO_DEVICE, DEVICE_TO_HOST = 1, 2          # cudaMemcpyKind
_LIBRARIES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")


class CudaError(EdgeDermError):
    """A CUDA runtime call that failed."""


class CudaRuntime:
    """Device and pinned host memory, async copies and one stream, every result checked."""

    def __init__(self, library: ctypes.CDLL | None = None):
        self.lib = library or self._load()

    @staticmethod
    def _load() -> ctypes.CDLL:
        for name in _LIBRARIES:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
        raise CudaError("the CUDA runtime (libcudart) is not found: TensorRT engines need an NVIDIA GPU "
                        "and its driver (on a Jetson: JetPack)")

    def _check(self, code: int, call: str) -> None:
        if code != 0:
            self.lib.cudaGetErrorString.restype = ctypes.c_char_p
            reason = self.lib.cudaGetErrorString(code)
            raise CudaError(f"CUDA {call} failed: {reason.decode() if reason else 'error ' + str(code)}")

    def malloc(self, nbytes: int) -> int:
        pointer = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(pointer), ctypes.c_size_t(nbytes)), f"cudaMalloc({nbytes})")
        return pointer.value

    def malloc_host(self, nbytes: int) -> int:
        """Page-locked host memory: copies from it run at full bus speed and truly asynchronously."""
        pointer = ctypes.c_void_p()
        self._check(self.lib.cudaMallocHost(ctypes.byref(pointer), ctypes.c_size_t(nbytes)),
                    f"cudaMallocHost({nbytes})")
        return pointer.value

    def free(self, pointer: int) -> None:
        self._check(self.lib.cudaFree(ctypes.c_void_p(pointer)), "cudaFree")

    def free_host(self, pointer: int) -> None:
        self._check(self.lib.cudaFreeHost(ctypes.c_void_p(pointer)), "cudaFreeHost")

    def stream_create(self) -> int:
        stream = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        return stream.value

    def stream_destroy(self, stream: int) -> None:
        self._check(self.lib.cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")

    def copy_async(self, destination: int, source: int, nbytes: int, kind: int, stream: int) -> None:
        self._check(self.lib.cudaMemcpyAsync(ctypes.c_void_p(destination), ctypes.c_void_p(source),
                                             ctypes.c_size_t(nbytes), ctypes.c_int(kind), ctypes.c_void_p(stream)),
                    "cudaMemcpyAsync " + ("host to device" if kind == HOST_TO_DEVICE else "device to host"))

    def synchronize(self, stream: int) -> None:
        self._check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")
