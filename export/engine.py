"""Build a TensorRT engine on the device from a Jetson bundle.

Engines are tied to the GPU and the TensorRT version that built them, so the
bundle carries ONNX graphs and the engine is built where it will run:

    edgederm engine build --bundle exports/tiny-jetson-int8 [--workspace-mb 1024]

TensorRT 8.5-10.x: a Q/DQ network needs BuilderFlag.INT8 (plus FP16 so the
layers left in float may run in half precision); FP16 is a builder flag.
TensorRT 11: every network is strongly typed and those flags are gone;
precision comes from the graph (Q/DQ nodes, or the FP16-typed ONNX). The
version decides, read from the installed `tensorrt`.

The engine, the timing cache (reused by the next build) and the device facts
(TensorRT version, GPU name and compute capability, L4T/JetPack release) are
added to the bundle's manifest. No torch, numpy only through tensorrt itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edgederm.errors import EdgeDermError
from edgederm.runtime.bundle import read_manifest, write_manifest
from edgederm.runtime.device import INSTALL_HINT, device_facts

ENGINE_FILE = "model.engine"
TIMING_CACHE = "timing.cache"
ONNX_FOR = {"int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}


class EngineError(EdgeDermError):
    """TensorRT missing, or an engine that could not be built."""


@dataclass(frozen=True)
class BuildPlan:
    """What to ask of TensorRT, decided from its major version and the precision alone."""
    major: int
    precision: str
    explicit_batch_flag: bool      # 8.x: networks are implicit-batch unless asked
    builder_flags: tuple[str, ...]  # BuilderFlag members to set

    @classmethod
    def for_version(cls, version: str, precision: str) -> "BuildPlan":
        major = int(version.split(".")[0])
        if precision not in ONNX_FOR:
            raise EngineError(f"no engine precision {precision!r} (choose from {', '.join(ONNX_FOR)})")
        if major >= 11:
            flags: tuple[str, ...] = ()          # strongly typed: precision is in the graph
        elif precision == "int8":
            flags = ("INT8", "FP16")
        else:
            flags = ("FP16",)
        return cls(major, precision, major < 10, flags)


def trtexec_command(plan: BuildPlan, onnx: Path, engine: Path, cache: Path, workspace_mb: int,
                    shapes: dict[str, tuple[list[int], list[int], list[int]]]) -> str:
    """The trtexec line that builds the same engine by hand."""
    def fmt(i: int) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, s[i]))}" for name, s in shapes.items())
    parts = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}", f"--timingCacheFile={cache}",
             f"--workspace={workspace_mb}" if plan.major < 10 else f"--memPoolSize=workspace:{workspace_mb}M",
             f"--minShapes={fmt(0)}", f"--optShapes={fmt(1)}", f"--maxShapes={fmt(2)}"]
    parts += ["--" + flag.lower() for flag in plan.builder_flags]
    return " ".join(parts)


def build_engine(bundle: str | Path, precision: str | None = None, workspace_mb: int = 1024,
                 max_batch: int = 8, log=print) -> Path:
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if manifest.get("target") != "jetson":
        raise EngineError(f"{bundle}: a {manifest.get('target')} bundle; engines are built from jetson bundles "
                          "(`edgederm export --target jetson`)")
    precision = precision or manifest["precision"]
    onnx_path = bundle / ONNX_FOR.get(precision, "")
    if precision not in ONNX_FOR or not onnx_path.is_file():
        raise EngineError(f"{bundle}: has no {precision} graph (it holds {', '.join(manifest['graphs'])})")
    try:
        import tensorrt as trt
    except ImportError:
        raise EngineError(INSTALL_HINT) from None

    plan = BuildPlan.for_version(trt.__version__, precision)
    size = manifest["preprocess"]["size"]
    shapes = {i["name"]: ([1, 3, size, size], [1, 3, size, size], [max_batch, 3, size, size])
              for i in manifest["inputs"]}
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if plan.explicit_batch_flag else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_path = bundle / TIMING_CACHE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)

    log(f"building a {precision} engine with TensorRT {trt.__version__} (this takes minutes on a Jetson)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{bundle}: TensorRT could not build the engine (see its log above); "
                          f"try a larger --workspace-mb than {workspace_mb}")
    engine_path = bundle / ENGINE_FILE
    for path, data in ((engine_path, bytes(serialized)), (cache_path, bytes(config.get_timing_cache().serialize()))):
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    manifest.pop("files", None)
    manifest["engine"] = {"file": ENGINE_FILE, "precision": precision, "onnx": onnx_path.name,
                          "workspace_mb": workspace_mb, "max_batch": max_batch,
                          "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          **device_facts(trt.__version__)}
    write_manifest(bundle, manifest)
    log("equivalent: " + trtexec_command(plan, onnx_path, engine_path, cache_path, workspace_mb, shapes))
    return engine_path
