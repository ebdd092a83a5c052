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

# The facts that make an engine unusable elsewhere. An engine is tuned for one TensorRT version and one GPU:
# every Orin module reports the GPU name "Orin" and compute capability 8.7, so the SM count (16 on an AGX
# Orin, 8 on an Orin NX 16 GB, 4-8 on an Orin Nano) and the board name from the device tree tell them
# apart. The L4T release is recorded but not compared: a patch update that keeps TensorRT keeps the engine.
CHECKED_FACTS = ("tensorrt", "gpu", "compute_capability", "sm_count", "board")
REQUIRED_FACTS = ("tensorrt", "gpu", "compute_capability", "sm_count")     # every CUDA machine has these
# CUdevice_attribute values of the CUDA driver API (cuda.h)
_CC_MAJOR, _CC_MINOR, _SM_COUNT = 75, 76, 16


def gpu_facts() -> dict:
    """GPU name, compute capability and SM count through the CUDA driver API (no pycuda / torch);
    {} when there is no usable NVIDIA driver or GPU."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return {}
    device, major, minor, sms = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    calls = (cuda.cuInit(0), cuda.cuDeviceGet(ctypes.byref(device), 0), cuda.cuDeviceGetName(name, 256, device),
             cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device),
             cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device),
             cuda.cuDeviceGetAttribute(ctypes.byref(sms), _SM_COUNT, device))
    if any(code != 0 for code in calls):      # half-read facts would compare as a different GPU
        return {}
    return {"gpu": name.value.decode(), "compute_capability": f"{major.value}.{minor.value}", "sm_count": sms.value}


def board() -> dict:
    """The module / carrier name a Jetson's device tree gives ("NVIDIA Jetson AGX Orin Developer Kit"); {} elsewhere."""
    try:
        return {"board": Path("/proc/device-tree/model").read_text().strip("\x00\n ")}
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
    return {"tensorrt": tensorrt_version, **gpu_facts(), **board(), **jetson_release(), "machine": platform.machine()}


def engine_mismatch(recorded: dict, here: dict) -> list[str]:
    """Why an engine recorded with `recorded` facts cannot be trusted here: a fact that differs, one that
    cannot be read here, or a required one the build did not record (an unreadable fact is a reason to
    refuse, never to skip the check). Only the board is optional: desktop GPUs have no device tree."""
    missing = [f"{k} not recorded at build" for k in REQUIRED_FACTS if recorded.get(k) is None]
    return missing + [f"{k} {recorded[k]} (here {'unreadable' if here.get(k) is None else here[k]})"
                      for k in CHECKED_FACTS if recorded.get(k) is not None and recorded.get(k) != here.get(k)]


def missing_facts(facts: dict) -> list[str]:
    """Required facts this machine cannot give: an engine built here could never be checked."""
    return [k for k in REQUIRED_FACTS if facts.get(k) is None]
