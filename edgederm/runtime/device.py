"""Facts about the device an engine is built on and runs on.

A TensorRT engine runs only on the GPU and TensorRT version that built it, so
`engine build` records these facts in the bundle manifest and the TensorRT
runtime compares them with the device it is on. Both sides read them from
here. ctypes and the standard library only: a Jetson has no pycuda or torch.
"""
from __future__ import annotations

import ctypes
import platform
import re
import subprocess
from pathlib import Path

INSTALL_HINT = ("tensorrt is not installed: on a Jetson it comes with JetPack (apt package "
                "python3-libnvinfer); on a desktop NVIDIA GPU `pip install 'edgederm[tensorrt]'`")

# The facts that make an engine unusable elsewhere (the machine architecture follows from the GPU).
CHECKED_FACTS = ("tensorrt", "gpu", "compute_capability", "l4t")


def gpu_facts() -> dict:
    """GPU name and compute capability through the CUDA driver API (no pycuda / torch)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        if cuda.cuInit(0) != 0:
            return {}
        device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        name = ctypes.create_string_buffer(256)
        cuda.cuDeviceGet(ctypes.byref(device), 0)
        cuda.cuDeviceGetName(name, 256, device)
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)   # COMPUTE_CAPABILITY_MAJOR
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)   # COMPUTE_CAPABILITY_MINOR
        return {"gpu": name.value.decode(), "compute_capability": f"{major.value}.{minor.value}"}
    except OSError:
        return {}


def jetson_release() -> dict:
    """L4T release from /etc/nv_tegra_release, JetPack from dpkg, where readable."""
    facts = {}
    try:
        first = Path("/etc/nv_tegra_release").read_text().splitlines()[0]
        m = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", first)
        if m:
            facts["l4t"] = f"{m.group(1)}.{m.group(2)}"
    except (OSError, IndexError):
        return facts
    try:
        out = subprocess.run(["dpkg-query", "--showformat=${Version}", "--show", "nvidia-jetpack"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            facts["jetpack"] = out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return facts


def device_facts(tensorrt_version: str) -> dict:
    return {"tensorrt": tensorrt_version, **gpu_facts(), **jetson_release(), "machine": platform.machine()}


def engine_mismatch(recorded: dict, here: dict) -> list[str]:
    """Facts of the engine's build machine that differ from this one."""
    return [f"{k} {recorded[k]} (here {here.get(k, 'unknown')})" for k in CHECKED_FACTS
            if recorded.get(k) is not None and recorded.get(k) != here.get(k)]
