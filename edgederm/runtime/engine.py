"""Build a TensorRT engine on the device from a Jetson bundle.

Engines are tied to the GPU and the TensorRT version that built them, so the
bundle carries ONNX graphs and the engine is built where it will run:

    edgederm engine build --bundle exports/tiny-jetson-int8 [--workspace-mb 1024]

TensorRT 8.5-10.x: a Q/DQ network needs BuilderFlag.INT8 (plus FP16 so the
layers left in float may run in half precision); FP16 is a builder flag.
TensorRT 11: every network is strongly typed and those flags are gone;
precision comes from the graph (Q/DQ nodes, or the FP16-typed ONNX), so an
INT8 engine is built from `model.int8.fp16.onnx`, the Q/DQ graph typed FP16
outside Q/DQ. The version decides, read from the installed `tensorrt`.

The engine, the timing cache (reused by the next build) and the device facts
(TensorRT version, GPU name and compute capability, L4T/JetPack release) are
added to the bundle's manifest. No torch, numpy only through tensorrt itself.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edgederm.errors import EdgeDermError
from edgederm.runtime.bundle import read_manifest, write_manifest
from edgederm.runtime.device import INSTALL_HINT, device_facts, missing_facts

ENGINE_FILE = "model.engine"
TIMING_CACHE = "timing.cache"
ONNX_FOR = {"int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
INT8_FP16_ONNX = "model.int8.fp16.onnx"    # INT8 for TensorRT 11: typed FP16 outside Q/DQ (exporter.jetson_bundle)
JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"     # JetPack installs trtexec here, not on PATH


def trtexec_path() -> str:
    return shutil.which("trtexec") or JETPACK_TRTEXEC


def batch_profiles(max_batch: int) -> list[tuple[int, int, int]]:
    """(min, opt, max) batch of each optimisation profile: batch 1 on its own (a clinic diagnoses one pair
    at a time, and kernels tuned for a larger batch are slower there), and 2..max_batch tuned for max_batch
    (`bench --batch 4,8`, `diagnose --pairs`). The runtime picks the profile by batch size."""
    return [(1, 1, 1)] + ([(2, max_batch, max_batch)] if max_batch > 1 else [])


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
    """The trtexec line that builds an engine from the same graph by hand, with one profile for `shapes`
    (min, opt, max per input). trtexec is not on PATH on a Jetson: JetPack puts it in /usr/src/tensorrt/bin."""
    def fmt(i: int) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, s[i]))}" for name, s in shapes.items())
    parts = [trtexec_path(), f"--onnx={onnx}", f"--saveEngine={engine}", f"--timingCacheFile={cache}",
             f"--workspace={workspace_mb}" if plan.major < 10 else f"--memPoolSize=workspace:{workspace_mb}M",
             f"--minShapes={fmt(0)}", f"--optShapes={fmt(1)}", f"--maxShapes={fmt(2)}"]
    parts += ["--" + flag.lower() for flag in plan.builder_flags]
    return " ".join(parts)


def _timing_cache(config, cache_path: Path, log):
    """The builder config's timing cache: the bundle's, when TensorRT accepts it; a new one when it is from
    another GPU or TensorRT version (set_timing_cache returns False for those, and the build would then
    have no cache to save)."""
    if cache_path.is_file():
        cache = config.create_timing_cache(cache_path.read_bytes())
        if cache is not None and config.set_timing_cache(cache, False):
            return cache
        log(f"{cache_path.name} is from another GPU or TensorRT version: starting a new one")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise EngineError(f"{cache_path.parent}: TensorRT refused a new, empty timing cache")
    return cache


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_engine(bundle: str | Path, precision: str | None = None, workspace_mb: int = 1024,
                 max_batch: int = 8, log=print, trt=None, facts: dict | None = None) -> Path:
    """`trt` and `facts` are for tests: a fake tensorrt module and this device's facts."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if manifest.get("target") != "jetson":
        raise EngineError(f"{bundle}: a {manifest.get('target')} bundle; engines are built from jetson bundles "
                          "(`edgederm export --target jetson`)")
    if max_batch < 1:
        raise EngineError(f"--max-batch must be at least 1, got {max_batch}")
    precision = precision or manifest["precision"]
    onnx_path = bundle / ONNX_FOR.get(precision, "")
    if precision not in ONNX_FOR or not onnx_path.is_file():
        raise EngineError(f"{bundle}: has no {precision} graph (it holds {', '.join(manifest['graphs'])})")
    if trt is None:
        try:
            import tensorrt as trt
        except ImportError:
            raise EngineError(INSTALL_HINT) from None
    facts = device_facts(trt.__version__) if facts is None else facts
    unreadable = missing_facts(facts)
    if unreadable:     # the runtime could never check such an engine against its device
        raise EngineError(f"{bundle}: cannot read this device's {', '.join(unreadable)} (CUDA driver API); "
                          "an engine built here could not be checked where it runs")

    plan = BuildPlan.for_version(trt.__version__, precision)
    if precision == "int8" and plan.major >= 11:
        # strongly typed: the FP32-typed INT8 graph would run every layer outside Q/DQ in FP32
        if INT8_FP16_ONNX in manifest["graphs"]:
            onnx_path = bundle / INT8_FP16_ONNX
        else:
            log(f"{bundle}: no {INT8_FP16_ONNX} (it failed the gate at export, or the bundle is older): TensorRT "
                f"{trt.__version__} runs the layers outside Q/DQ in FP32")
    profiles = batch_profiles(max_batch)
    cache_path = bundle / TIMING_CACHE
    builder, network, config = _network_and_config(trt, plan, bundle, onnx_path, manifest["inputs"], profiles,
                                                   workspace_mb)
    _timing_cache(config, cache_path, log)

    log(f"building a {precision} engine with TensorRT {trt.__version__} (this takes minutes on a Jetson)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{bundle}: TensorRT could not build the engine (see its log above); "
                          f"try a larger --workspace-mb than {workspace_mb}")
    engine_path = bundle / ENGINE_FILE
    _write(engine_path, bytes(serialized))
    timing = config.get_timing_cache()
    if timing is not None:
        _write(cache_path, bytes(timing.serialize()))
    _record_engine(bundle, manifest, precision, onnx_path, workspace_mb, max_batch, profiles, facts)
    shapes = {i["name"]: ([1, *i["shape"][1:]], [1, *i["shape"][1:]], [max_batch, *i["shape"][1:]])
              for i in manifest["inputs"]}
    log("by hand, with one profile for batch 1 to " + str(max_batch) + ": "
        + trtexec_command(plan, onnx_path, engine_path, cache_path, workspace_mb, shapes))
    return engine_path


def _network_and_config(trt, plan: BuildPlan, bundle: Path, onnx_path: Path, inputs: list[dict],
                        profiles: list[tuple[int, int, int]], workspace_mb: int):
    """The parsed network and a builder config with the plan's flags and one optimisation profile per batch
    range."""
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
    for low, opt, high in profiles:
        profile = builder.create_optimization_profile()
        for i in inputs:
            shape = i["shape"][1:]      # the manifest's: 3 x S x S for a photo, 14 for the metadata
            profile.set_shape(i["name"], [low, *shape], [opt, *shape], [high, *shape])
        if config.add_optimization_profile(profile) < 0:
            raise EngineError(f"{bundle}: TensorRT refused the optimisation profile for batch {low}-{high}")
    return builder, network, config


def _record_engine(bundle: Path, manifest: dict, precision: str, onnx_path: Path, workspace_mb: int,
                   max_batch: int, profiles: list[tuple[int, int, int]], facts: dict) -> None:
    """The engine, how it was built and on what device, in the bundle's manifest (checksums rewritten)."""
    manifest.pop("files", None)
    manifest["engine"] = {"file": ENGINE_FILE, "precision": precision, "onnx": onnx_path.name,
                          "workspace_mb": workspace_mb, "max_batch": max_batch,
                          "profiles": [[low, high] for low, _, high in profiles],
                          "built": datetime.now(timezone.utc).isoformat(timespec="seconds"), **facts}
    if precision != manifest["precision"]:
        # the engine runs the other graph: the bundle's accuracy figures are the exported graph's, not its own
        manifest["engine"]["metrics"] = None
        manifest["engine"]["note"] = (f"built from {onnx_path.name}; the manifest's metrics are those of the "
                                      f"{manifest['precision']} graph")
    elif onnx_path.name == INT8_FP16_ONNX:
        manifest["engine"]["note"] = (f"built from {INT8_FP16_ONNX} (TensorRT 11); its gate on valid is the "
                                      "manifest's int8_fp16, its metrics those of model.int8.onnx")
    write_manifest(bundle, manifest)
