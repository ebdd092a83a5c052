"""Build a TensorRT engine on the device from a Jetson bundle.

Engines are tied to the GPU and the TensorRT version that built them, so the
bundle carries ONNX graphs and the engine is built where it will run:

    edgederm engine build --bundle exports/tiny-jetson-int8 [--workspace-mb 1024] [--ungated]

An engine runs what the export's gate judged. The gate judges every graph on
valid in onnxruntime, and records per typed graph (the manifest's `fp16` and
`int8_fp16`, export/fp16_typing.py) whether it passed and which ONNX nodes it
computes in FP32. How each TensorRT version is made to run exactly that:

- TensorRT 11: every network is strongly typed (the builder flags are gone),
  so precision comes from the graph: an INT8 engine is built from
  `model.int8.fp16.onnx` (Q/DQ, FP16 outside it) when that graph passed its
  gate, else from `model.int8.onnx` (FP32 outside Q/DQ).
- TensorRT 8.5-10.x: networks are weakly typed and the builder picks each
  layer's precision by speed among those the flags allow. FP16 is allowed
  only where the gate passed an FP16 typing, and the nodes that typing keeps
  FP32 are pinned (`layer.precision`, FP32 output types) under
  OBEY_PRECISION_CONSTRAINTS. An INT8 bundle whose FP16-typed graph failed
  (or an older bundle without the record) builds INT8 alone: its float
  regions run FP32, as the INT8 gate judged them.
- An FP16 graph that failed its gate, or was never judged (exported without
  --data), is built only with --ungated, and the engine's record says so.

The engine, how it was built (`settings`), the timing cache (reused by the
next build) and the device facts (TensorRT version, GPU name and compute
capability, L4T/JetPack release) are added to the bundle's manifest. No
torch, numpy only through tensorrt itself.
"""
from __future__ import annotations

import os
import re
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


GATE_PASSED = "passed"
TRTEXEC_PINS = 20       # more pinned layers than this do not fit a readable trtexec line


@dataclass(frozen=True)
class BuildPlan:
    """What to ask of TensorRT: decided from its major version, the precision and the gate's record alone."""
    major: int
    precision: str
    explicit_batch_flag: bool      # 8.x: networks are implicit-batch unless asked
    builder_flags: tuple[str, ...]  # BuilderFlag members to set
    onnx: str                       # the graph it builds from
    float_ops: str                  # what the layers outside Q/DQ run in: what the gate approved
    fp32_operations: tuple[str, ...]  # ONNX nodes pinned to FP32 (weakly typed TensorRT only)
    fp32_blocks: tuple[str, ...]    # the gate's blocks among them (the rest: LayerNorm, Softmax, ...)
    gated: bool                     # False: built with --ungated from a graph the gate did not pass

    @classmethod
    def for_bundle(cls, version: str, precision: str, manifest: dict, bundle: Path | str = "the bundle",
                   ungated: bool = False) -> "BuildPlan":
        """The plan that runs what the gate judged (module docstring); a one-line EngineError for an FP16 graph
        the gate did not pass, unless `ungated`."""
        major = int(version.split(".")[0])
        if precision not in ONNX_FOR:
            raise EngineError(f"no engine precision {precision!r} (choose from {', '.join(ONNX_FOR)})")
        gated = check_gate(manifest, precision, bundle, ungated)
        if precision == "fp16":
            onnx, float_ops, approved = ONNX_FOR["fp16"], "fp16", manifest.get("fp16") or {}
        else:
            record = manifest.get("int8_fp16") or {}
            typed = INT8_FP16_ONNX in manifest.get("graphs", ()) and _gate_of(record) == GATE_PASSED
            # weakly typed: FP16 outside Q/DQ only where the typed graph passed and says which nodes it kept FP32
            fp16 = typed if major >= 11 else typed and record.get("fp32_operations") is not None
            onnx = INT8_FP16_ONNX if major >= 11 and typed else ONNX_FOR["int8"]
            float_ops, approved = ("fp16", record) if fp16 else ("fp32", {})
        if major >= 11:       # strongly typed: the graph's own types are the constraints
            return cls(major, precision, False, (), onnx, float_ops, (), tuple(approved.get("kept_in_float32") or ()),
                       gated)
        pins = tuple(approved.get("fp32_operations") or ())
        flags = (("INT8",) if precision == "int8" else ()) + (("FP16",) if float_ops == "fp16" else ())
        flags += ("OBEY_PRECISION_CONSTRAINTS",) if pins else ()
        return cls(major, precision, major < 10, flags, onnx, float_ops, pins,
                   tuple(approved.get("kept_in_float32") or ()), gated)

    def label(self) -> str:
        """'int8 (float ops fp16, 3 blocks pinned fp32)': what the engine runs, as bench and diagnose show it."""
        notes = [f"float ops {self.float_ops}"]
        if self.fp32_blocks:
            notes.append(f"{len(self.fp32_blocks)} block(s) {'pinned ' if self.major < 11 else ''}fp32")
        if not self.gated:
            notes.append("not gated")
        return f"{self.precision} ({', '.join(notes)})"


def check_gate(manifest: dict, precision: str, bundle: Path | str, ungated: bool) -> bool:
    """Whether the graph an engine of `precision` builds from passed the export's gate; a one-line EngineError for
    an FP16 graph that failed it or was never judged, unless `ungated`. (An INT8 bundle exists only because its
    INT8 graph passed.)"""
    if precision != "fp16":
        return True
    gate = _gate_of(manifest.get("fp16") or {})
    if gate == GATE_PASSED:
        return True
    if not ungated:
        why = ("failed its gate on the valid split at export" if gate == "failed"
               else "was not gated (exported without --data)")
        raise EngineError(f"{bundle}: its FP16 graph {why}; re-export with --data, or build it anyway with "
                          "--ungated (its engine is then marked not gated)")
    return False


def _gate_of(record: dict) -> str:
    """A typed graph's gate verdict: its record's, or, for bundles exported before the record said so, "passed"
    when it names a graph (a graph that failed was left out then) and "not gated" when there is none."""
    return record.get("gate") or (GATE_PASSED if record.get("graph") else "not gated")


def onnx_node_of(layer_name: str, nodes: set[str]) -> str | None:
    """The ONNX node a TensorRT layer was parsed from, when it is one of `nodes`. TensorRT's ONNX parser names a
    node's first layer after the node, and each further layer `<node>_<counter>` (onnx-tensorrt's
    ImporterContext::registerLayer), so a name is tried whole, then with its numeric suffixes stripped one at a
    time. A layer of an unpinned node `x_3` beside a pinned node `x` may be pinned too: that runs it in FP32,
    never in a precision the gate did not judge."""
    name = layer_name
    while name not in nodes:
        stripped = re.fullmatch(r"(.+)_\d+", name)
        if stripped is None:
            return None
        name = stripped.group(1)
    return name


def pin_fp32(trt, network, operations: tuple[str, ...]) -> dict:
    """Every layer of `operations` computed in FP32 with FP32 outputs (its float outputs: a TopK's indices keep
    their type); what was pinned, and which of the nodes no layer came from (folded by the parser)."""
    wanted, found, layers = set(operations), set(), 0
    floats = (trt.float32, trt.float16)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        node = onnx_node_of(layer.name, wanted)
        outputs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]
        if node is None or not outputs:
            continue
        layer.precision = trt.float32
        for j in outputs:
            layer.set_output_type(j, trt.float32)
        found.add(node)
        layers += 1
    if wanted and not found:
        raise EngineError(f"none of the {len(wanted)} operations the gate kept FP32 names a TensorRT layer "
                          "(the parser's layer names changed?); refusing to build an engine the gate did not judge")
    return {"operations": len(found), "layers": layers, "no_layer": sorted(wanted - found)}


def trtexec_command(plan: BuildPlan, onnx: Path, engine: Path, cache: Path, workspace_mb: int,
                    shapes: dict[str, tuple[list[int], list[int], list[int]]]) -> str:
    """The trtexec line that builds an engine from the same graph by hand, with one profile for `shapes`
    (min, opt, max per input). trtexec is not on PATH on a Jetson: JetPack puts it in /usr/src/tensorrt/bin."""
    def fmt(i: int) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, s[i]))}" for name, s in shapes.items())
    parts = [trtexec_path(), f"--onnx={onnx}", f"--saveEngine={engine}", f"--timingCacheFile={cache}",
             f"--workspace={workspace_mb}" if plan.major < 10 else f"--memPoolSize=workspace:{workspace_mb}M",
             f"--minShapes={fmt(0)}", f"--optShapes={fmt(1)}", f"--maxShapes={fmt(2)}"]
    parts += ["--" + flag.lower() for flag in plan.builder_flags if flag != "OBEY_PRECISION_CONSTRAINTS"]
    if plan.fp32_operations:
        # the layer names are the nodes' (only each node's first layer: the line is a sketch beyond that)
        pins = ",".join(f"{op}:fp32" for op in plan.fp32_operations[:TRTEXEC_PINS])
        parts += ["--precisionConstraints=obey", f"--layerPrecisions={pins}", f"--layerOutputTypes={pins}"]
        if len(plan.fp32_operations) > TRTEXEC_PINS:
            parts.append(f"# and {len(plan.fp32_operations) - TRTEXEC_PINS} more pins: edgederm engine build sets "
                         "them all")
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
                 max_batch: int = 8, log=print, trt=None, facts: dict | None = None, ungated: bool = False) -> Path:
    """`ungated`: build an FP16 graph the gate did not pass (module docstring). `trt` and `facts` are for tests:
    a fake tensorrt module and this device's facts."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if manifest.get("target") != "jetson":
        raise EngineError(f"{bundle}: a {manifest.get('target')} bundle; engines are built from jetson bundles "
                          "(`edgederm export --target jetson`)")
    if max_batch < 1:
        raise EngineError(f"--max-batch must be at least 1, got {max_batch}")
    precision = precision or manifest["precision"]
    if precision not in ONNX_FOR or not (bundle / ONNX_FOR[precision]).is_file():
        raise EngineError(f"{bundle}: has no {precision} graph (it holds {', '.join(manifest['graphs'])})")
    check_gate(manifest, precision, bundle, ungated)     # before anything is needed of this device
    if trt is None:
        try:
            import tensorrt as trt
        except ImportError:
            raise EngineError(INSTALL_HINT) from None
    plan = BuildPlan.for_bundle(trt.__version__, precision, manifest, bundle, ungated)
    facts = device_facts(trt.__version__) if facts is None else facts
    unreadable = missing_facts(facts)
    if unreadable:     # the runtime could never check such an engine against its device
        raise EngineError(f"{bundle}: cannot read this device's {', '.join(unreadable)} (CUDA driver API); "
                          "an engine built here could not be checked where it runs")
    if precision == "int8" and plan.float_ops == "fp32":
        log(f"{bundle}: no FP16-typed INT8 graph passed the gate at export (or the bundle predates the record): "
            f"TensorRT {trt.__version__} runs the layers outside Q/DQ in FP32, as the INT8 gate judged them")
    onnx_path = bundle / plan.onnx
    profiles = batch_profiles(max_batch)
    cache_path = bundle / TIMING_CACHE
    builder, network, config, pinned = _network_and_config(trt, plan, bundle, onnx_path, manifest["inputs"],
                                                           profiles, workspace_mb)
    _timing_cache(config, cache_path, log)

    log(f"building the engine, {plan.label()}, with TensorRT {trt.__version__} (this takes minutes on a Jetson)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{bundle}: TensorRT could not build the engine (see its log above); "
                          f"try a larger --workspace-mb than {workspace_mb}")
    engine_path = bundle / ENGINE_FILE
    _write(engine_path, bytes(serialized))
    timing = config.get_timing_cache()
    if timing is not None:
        _write(cache_path, bytes(timing.serialize()))
    _record_engine(bundle, manifest, plan, pinned, workspace_mb, max_batch, profiles, facts)
    shapes = {i["name"]: ([1, *i["shape"][1:]], [1, *i["shape"][1:]], [max_batch, *i["shape"][1:]])
              for i in manifest["inputs"]}
    log("by hand, with one profile for batch 1 to " + str(max_batch) + ": "
        + trtexec_command(plan, onnx_path, engine_path, cache_path, workspace_mb, shapes))
    return engine_path


def _network_and_config(trt, plan: BuildPlan, bundle: Path, onnx_path: Path, inputs: list[dict],
                        profiles: list[tuple[int, int, int]], workspace_mb: int):
    """The parsed network, a builder config with the plan's flags and one optimisation profile per batch range,
    and what `pin_fp32` pinned (None: nothing to pin)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if plan.explicit_batch_flag else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    pinned = pin_fp32(trt, network, plan.fp32_operations) if plan.fp32_operations else None
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
    return builder, network, config, pinned


def _record_engine(bundle: Path, manifest: dict, plan: BuildPlan, pinned: dict | None, workspace_mb: int,
                   max_batch: int, profiles: list[tuple[int, int, int]], facts: dict) -> None:
    """The engine, how it was built and on what device, in the bundle's manifest (checksums rewritten)."""
    manifest.pop("files", None)
    manifest["engine"] = {"file": ENGINE_FILE, "precision": plan.precision, "onnx": plan.onnx,
                          "settings": {"label": plan.label(), "builder_flags": list(plan.builder_flags),
                                       "float_ops": plan.float_ops, "gate": "passed" if plan.gated else "ungated",
                                       "fp32_blocks": list(plan.fp32_blocks), "pinned": pinned},
                          "workspace_mb": workspace_mb, "max_batch": max_batch,
                          "profiles": [[low, high] for low, _, high in profiles],
                          "built": datetime.now(timezone.utc).isoformat(timespec="seconds"), **facts}
    if plan.precision != manifest["precision"]:
        # the engine runs the other graph: the bundle's accuracy figures are the exported graph's, not its own
        manifest["engine"]["metrics"] = None
        manifest["engine"]["note"] = (f"built from {plan.onnx}; the manifest's metrics are those of the "
                                      f"{manifest['precision']} graph")
    elif plan.onnx == INT8_FP16_ONNX:
        manifest["engine"]["note"] = (f"built from {INT8_FP16_ONNX} (TensorRT 11); its gate on valid is the "
                                      "manifest's int8_fp16, its metrics those of model.int8.onnx")
    elif plan.float_ops == "fp16" and plan.precision == "int8":
        manifest["engine"]["note"] = ("FP16 outside Q/DQ as the manifest's int8_fp16 was gated, with its FP32 "
                                      "nodes pinned; its metrics those of model.int8.onnx")
    write_manifest(bundle, manifest)
