"""Test helpers that other processes must import: the exporter builds bundles in spawned workers
(export/isolation.py), which import a function by its module path, so a stand-in format function
lives here and not inside a test."""
from __future__ import annotations

import os
import signal
from pathlib import Path


def half_bundle_then_interrupt(ctx, target, precision: str, directory: Path, log) -> None:
    """A format function interrupted (Ctrl-C) after writing part of its bundle."""
    (directory / "model.xml").write_text("half")
    raise KeyboardInterrupt


def segfault_on_int8(ctx, target, precision: str, directory: Path, log) -> None:
    """The OpenVINO format function, except that an INT8 bundle dies of SIGSEGV half-way, as OpenVINO's
    AMX kernels did on the in-memory NNCF model."""
    from edgederm.export.bundles import openvino_bundle
    if precision == "int8":
        (directory / "model.xml").write_text("half")
        log("about to crash")
        os.kill(os.getpid(), signal.SIGSEGV)
    openvino_bundle(ctx, target, precision, directory, log)


def kill_self(signal_number: int, log) -> None:
    os.kill(os.getpid(), signal_number)


def add(a: int, b: int, log) -> int:
    log(f"adding {a} and {b}")
    return a + b


def raise_config_error(message: str, log) -> None:
    from edgederm.errors import ConfigError
    raise ConfigError(message)


def refusing_int8(ctx, target, precision: str, directory: Path, log) -> None:
    """The target's format function, except that its INT8 bundle is refused by the gate."""
    from edgederm.export import bundles
    from edgederm.export.int8_gate import NoPassingInt8
    if precision == "int8":
        raise NoPassingInt8(f"{target.name} int8: no INT8 graph passes the gate on the valid split (test)")
    getattr(bundles, f"{target.name}_bundle")(ctx, target, precision, directory, log)


def jetson_bundle_in_onnxruntime_form(ctx, target, precision: str, directory: Path, log) -> None:
    """The Jetson format function with the Q/DQ graph left in onnxruntime's form (no `tensorrt_form`),
    which TensorRT 10.3 would refuse. Patched here, in the worker: the worker is where the graph is made."""
    from edgederm.export import bundles, tensorrt_export
    tensorrt_export.tensorrt_form = lambda model: model
    bundles.jetson_bundle(ctx, target, precision, directory, log)


def interrupted_qat(ctx, target, precision: str, directory: Path, log) -> None:
    """The OpenVINO format function, with quantization-aware fine-tuning interrupted (Ctrl-C) in its first
    step: patched here, in the worker, where the student trains."""
    from edgederm.export import bundles, qat

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    qat.distill = interrupt
    bundles.openvino_bundle(ctx, target, precision, directory, log)


def plain_ptq_refused(ctx, target, precision: str, directory: Path, log) -> None:
    """The target's format function, with every plain PTQ graph failing the gate on valid: the search goes
    on to QAT. Patched here, in the worker, where the search runs."""
    from edgederm.export import bundles, int8_gate
    judge = int8_gate.judge_on_valid

    def failing_plain(valid, attempt, probabilities, log):
        attempt = judge(valid, attempt, probabilities, log)
        if attempt.method.startswith("plain PTQ"):
            attempt.result["verdict"] = "fail"
            attempt.result["reasons"].insert(0, "refused by the test")
        return attempt
    int8_gate.judge_on_valid = failing_plain
    getattr(bundles, f"{target.name}_bundle")(ctx, target, precision, directory, log)
