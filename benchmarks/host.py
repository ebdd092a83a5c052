"""Facts about the machine a benchmark ran on, and Jetson telemetry during it.

CPU model and its int8 dot-product instructions decide whether INT8 can be
faster than FP32 (AVX512-VNNI, AVX-VNNI, AMX); on a Jetson the power mode and
clocks decide everything, so `tegrastats` is sampled while the bench runs.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "avx512_bf16", "asimddp", "i8mm")
LIBRARIES = ("edgederm", "numpy", "opencv-python-headless", "onnxruntime", "openvino", "tensorrt", "torch")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, flags


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def is_jetson() -> bool:
    return Path("/etc/nv_tegra_release").is_file()


def _nvpmodel() -> str | None:
    if not shutil.which("nvpmodel"):
        return None
    out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10)
    return " ".join(out.stdout.split()) or None


def host_facts() -> dict:
    model, flags = _cpuinfo()
    libraries = {}
    for name in LIBRARIES:
        try:
            libraries[name] = version(name)
        except PackageNotFoundError:
            pass
    facts = {"cpu": model, "int8_instructions": sorted(f for f in INT8_FLAGS if f in flags),
             "cores": os.cpu_count(), "memory_gib": _memory_gib(),
             "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
             "libraries": libraries}
    if is_jetson():
        from edgederm.runtime.device import jetson_release
        facts["jetson"] = {**jetson_release(), "power_mode": _nvpmodel()}
    return facts


class Tegrastats:
    """Samples `tegrastats` while a `with` block runs (no-op off a Jetson)."""

    POWER = re.compile(r"(VDD_IN|POM_5V_IN|VIN_SYS_5V0)\s+(\d+)mW")
    TEMP = re.compile(r"(\w+)@(-?[\d.]+)C")
    GPU = re.compile(r"GR3D_FREQ\s+(\d+)%(?:@\[?(\d+)\]?)?")

    def __init__(self, interval_ms: int = 500):
        self.interval_ms, self.lines, self._process = interval_ms, [], None

    def __enter__(self):
        if shutil.which("tegrastats"):
            self._process = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)],
                                             stdout=subprocess.PIPE, text=True)
            threading.Thread(target=lambda: self.lines.extend(self._process.stdout), daemon=True).start()
        return self

    def __exit__(self, *exc):
        if self._process:
            self._process.terminate()
            self._process.wait(timeout=5)

    def summary(self) -> dict | None:
        if not self.lines:
            return None
        power = [int(m.group(2)) for line in self.lines for m in [self.POWER.search(line)] if m]
        temps: dict[str, list[float]] = {}
        for line in self.lines:
            for name, value in self.TEMP.findall(line):
                temps.setdefault(name, []).append(float(value))
        gpu = [int(m.group(1)) for line in self.lines for m in [self.GPU.search(line)] if m]
        return {"samples": len(self.lines),
                "power_mw_mean": sum(power) / len(power) if power else None,
                "power_mw_max": max(power) if power else None,
                "temperature_c_max": {k: max(v) for k, v in temps.items()},
                "gpu_load_percent_mean": sum(gpu) / len(gpu) if gpu else None,
                "last_line": self.lines[-1].strip()}
