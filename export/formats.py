"""The one table of export targets: what each writes, its precisions, which
precisions need calibration data. Argument checking, export and benchmark
all read it."""
from __future__ import annotations

from dataclasses import dataclass

from edgederm.errors import ConfigError


@dataclass(frozen=True)
class Target:
    name: str
    backend: str                     # runtime that loads its bundles
    precisions: tuple[str, ...]
    default_precision: str
    calibrated: tuple[str, ...]      # precisions that need --data for calibration
    device: str                      # where it runs
    description: str


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("torch", "torch", ("fp32",), "fp32", (), "cpu/gpu",
           "PyTorch weights (safetensors): the FP32 reference for benchmarks"),
    Target("onnx", "onnxruntime", ("fp32",), "fp32", (), "cpu/gpu",
           "ONNX (opset 17), fused per-task probabilities, dynamic batch"),
    Target("openvino", "openvino", ("fp32", "fp16", "int8"), "fp32", ("int8",), "cpu/igpu/npu",
           "OpenVINO IR; FP16 weights; INT8 through NNCF"),
    Target("jetson", "tensorrt", ("int8", "fp16"), "int8", ("int8",), "jetson",
           "ONNX for TensorRT: FP16-typed graph and symmetric INT8 Q/DQ graph; engine built on the device"),
)}


def parse_request(target: str, precisions: str | None) -> tuple[Target, list[str]]:
    """Validate --target / --precision before any work starts."""
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    spec = TARGETS[target]
    asked = [p.strip() for p in (precisions or spec.default_precision).split(",") if p.strip()]
    unknown = [p for p in asked if p not in spec.precisions]
    if unknown or not asked:
        raise ConfigError(f"precision {','.join(unknown) or '(none)'} is not available for target {target} "
                          f"(choose from {', '.join(spec.precisions)})")
    return spec, list(dict.fromkeys(asked))
