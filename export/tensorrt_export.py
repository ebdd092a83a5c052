"""ONNX graphs for TensorRT's explicit precision: an FP16-typed graph and a
symmetric INT8 Q/DQ graph. Engines are built later, on the device (engine.py).

The Q/DQ quantizer is onnxruntime.quantization (`quantize_static`, QDQ format):
it is already a dependency, calibrates on the CPU from the shared calibration
set, and is configured here for what TensorRT's explicit quantization wants:
signed int8 activations and weights, symmetric (zero points 0), per-channel
weights, Q/DQ only on the inputs of Conv / MatMul / Gemm (where TensorRT fuses
them into INT8 kernels), biases left in float; `tensorrt_form` then gives the
graph the Q/DQ form TensorRT takes (export/jetson_check.py). NVIDIA's ModelOpt would do the
same job but pins its own onnx version and brings a large dependency tree; it
remains the alternative if a future graph needs its placement rules. This
module is the one place that choice is made.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from edgederm.calibration.adapters import OrtCalibrationReader
from edgederm.calibration.selection import CalibrationSet

QDQ_QUANTIZER = "onnxruntime.quantization.quantize_static (QDQ, symmetric int8, per-channel weights, MinMax)"
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]
# DequantizeLinear takes float16 scales (and so gives float16 outputs) from opset 19 on.
INT8_FP16_OPSET = 19
# Computed in float32 inside the FP16 graph: in FP16, LayerNorm's variance sums and Softmax's exponentials
# overflow or lose the small probabilities (export/jetson_check.py checks it).
FLOAT32_OPS = ["LayerNormalization", "Softmax"]
FP16_OP_BLOCK_LIST = DEFAULT_OP_BLOCK_LIST + FLOAT32_OPS     # onnxruntime's (no FP16 kernels) and ours


class QdqQuantizer:
    """One FP32 graph, prepared and calibrated once, quantized as often as the INT8 search asks
    (export/int8_gate.py: the plain graph, graphs with layers left out of Q/DQ, and export/sensitivity.py:
    one graph per layer). The activation ranges are cached in `workdir` after the first call
    (quantize_static's calibration_cache_path), so later calls only rewrite the graph."""

    def __init__(self, fp32_onnx: Path, calib: CalibrationSet, workdir: Path,
                 calibrate_method: CalibrationMethod = CalibrationMethod.MinMax):
        workdir.mkdir(parents=True, exist_ok=True)
        self.calib, self.method = calib, calibrate_method
        self.cache = workdir / f"qdq-calibration-{calibrate_method.name.lower()}.json"
        # ONNX shape inference only: ORT's graph optimisations could introduce ORT-specific
        # fused ops that TensorRT's parser does not know, and ORT's symbolic shape
        # inference gives up on Swin's window reshapes.
        self.prepared = workdir / "qdq-prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(self.prepared), skip_optimization=True, skip_symbolic_shape=True)

    def layers(self) -> list[str]:
        """Names of the nodes Q/DQ goes in front of (the graph's Conv / MatMul / Gemm), in graph order."""
        return [n.name for n in onnx.load(str(self.prepared)).graph.node if n.op_type in QUANTIZED_OPS]

    def quantize(self, out: Path, exclude: list[str] | tuple = (), only: list[str] | None = None,
                 check: bool = True) -> Path:
        """The symmetric Q/DQ graph at `out`; layers in `exclude` stay in float; with `only`, every other
        layer does (the per-layer sensitivity measurement)."""
        quantize_static(
            str(self.prepared), str(out), OrtCalibrationReader(self.calib),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            per_channel=True, op_types_to_quantize=QUANTIZED_OPS, calibrate_method=self.method,
            nodes_to_quantize=only, nodes_to_exclude=list(exclude), calibration_cache_path=str(self.cache),
            # Not onnxruntime's DedicatedQDQPair / AddQDQPairToWeight: they change which tensors are
            # quantized (max 0.01 in probability on the tiny model's valid split); tensorrt_form below
            # gives TensorRT its form and leaves every output as it is.
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                           "OpTypesToExcludeOutputQuantization": QUANTIZED_OPS},
        )
        if check:
            # The sensitivity graphs (check=False) are only run on the CPU, where the form changes nothing.
            model = tensorrt_form(onnx.load(str(out)))
            onnx.checker.check_model(model, full_check=True)
            onnx.save(model, str(out))
        return out


def tensorrt_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's Q/DQ graph in the form TensorRT's explicit quantization takes
    (export/jetson_check.py checks it), computing exactly what it computed:

    - a weight stored as an int8 initializer into a lone DequantizeLinear becomes the float
      initializer q * scale behind its own QuantizeLinear -> DequantizeLinear pair (quantizing
      q * scale again gives q back: the error of the product is far below half a step);
    - a DequantizeLinear output read by several nodes gets one DequantizeLinear per reader, so
      TensorRT can fuse each pair into its consumer; a Shape reads the float tensor before the
      QuantizeLinear instead (same shape, and no int8 tensor kept alive just for its shape)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        for slot, name in enumerate(node.input):
            readers[name].append((node, slot))
    graph_outputs = {o.name for o in graph.output}
    replaced: set[str] = set()
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            ordered.append(node)
            continue
        users = readers[node.output[0]]
        source = producers.get(node.input[0])
        if source is not None and source.op_type == "QuantizeLinear":
            for user, slot in [u for u in users if u[0].op_type == "Shape"]:
                user.input[slot] = source.input[0]
                users.remove((user, slot))
        if not users and node.output[0] not in graph_outputs:     # it only fed Shapes
            continue
        weight = inits.get(node.input[0])
        if weight is not None and weight.data_type == onnx.TensorProto.INT8:
            ordered.append(_weight_quantizer(node, weight, inits, graph))
            replaced.add(weight.name)
        ordered.append(node)
        kept = 0 if node.output[0] in graph_outputs else 1     # a graph output counts as a reader
        for copy_index, (user, slot) in enumerate(users[kept:], start=1):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name, copy.output[0] = f"{node.name}_{copy_index}", f"{node.output[0]}_{copy_index}"
            user.input[slot] = copy.output[0]
            ordered.append(copy)
    still_read = {name for node in ordered for name in node.input}
    keep = [t for t in graph.initializer if t.name not in replaced or t.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def _weight_quantizer(dequantize: onnx.NodeProto, weight: onnx.TensorProto, inits: dict, graph) -> onnx.NodeProto:
    """The QuantizeLinear that gives `dequantize` its int8 weight from a float initializer; adds that initializer."""
    q = numpy_helper.to_array(weight).astype(np.float32)
    scale = numpy_helper.to_array(inits[dequantize.input[1]]).astype(np.float32)
    zero = (numpy_helper.to_array(inits[dequantize.input[2]]).astype(np.float32)
            if len(dequantize.input) > 2 and dequantize.input[2] else np.zeros_like(scale))
    if scale.ndim == 1 and q.ndim > 1:      # per-channel: the scale runs along `axis`
        axis = next((a.i for a in dequantize.attribute if a.name == "axis"), 1) % q.ndim
        shape = [1] * q.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    name = weight.name.removesuffix("_quantized") + "_float"
    graph.initializer.append(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), name))
    quantized = f"{name}_QuantizeLinear_Output"
    dequantize.input[0] = quantized
    return helper.make_node("QuantizeLinear", [name, *dequantize.input[1:]], [quantized],
                            name=f"{name}_QuantizeLinear",
                            **{a.name: helper.get_attribute_value(a) for a in dequantize.attribute})


def _topological_sort(graph: onnx.GraphProto) -> None:
    """The FP16 converter appends its input casts at the end of the node list; the
    ONNX spec (and TensorRT's parser) want producers before consumers."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:          # passes in the original order: a graph already sorted takes one
        waiting = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input near node {waiting[0].name}")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)


def _drop_fp16_round_trips(model: onnx.ModelProto) -> None:
    """Between two nodes kept in float32 the converter still stores the tensor in FP16 (a Cast to FP16 and
    one back): the value is rounded, and overflows where FP16 ends (65504), which is what keeping them in
    float32 was for. The reader of such a pair reads the float32 tensor instead; a Cast to FP16 left
    without readers goes."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    inferred = onnx.shape_inference.infer_shapes(model).graph
    elem_type = {v.name: v.type.tensor_type.elem_type for v in (*inferred.input, *inferred.value_info)}

    def cast_to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    bypass: dict[str, str] = {}
    for node in graph.node:
        source = producers.get(node.input[0]) if node.input else None
        if (cast_to(node) == onnx.TensorProto.FLOAT and source is not None
                and cast_to(source) == onnx.TensorProto.FLOAT16
                and elem_type.get(source.input[0]) == onnx.TensorProto.FLOAT):     # not an int64 shape made float
            bypass[node.output[0]] = source.input[0]
    if not bypass:
        return
    outputs = {o.name for o in graph.output}
    kept = [n for n in graph.node if not (n.op_type == "Cast" and n.output[0] in bypass and n.output[0] not in outputs)]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = bypass.get(name, name)
    read = {i for n in kept for i in n.input} | outputs
    kept = [n for n in kept if not (cast_to(n) == onnx.TensorProto.FLOAT16 and n.output[0] not in read)]
    del graph.node[:]
    graph.node.extend(kept)


def convert_fp16(fp32_onnx: Path, out: Path, keep: list[str] | tuple = ()) -> Path:
    """FP16 weights and activations, float32 inputs and outputs (TensorRT 11 is strongly
    typed: precision must be in the graph; TensorRT 8.5-10 build it with the FP16 flag). The nodes
    `keep` stay FP32 (export/fp16_typing.py chooses them)."""
    model = convert_float_to_float16(onnx.load(str(fp32_onnx)), keep_io_types=True,
                                     op_block_list=FP16_OP_BLOCK_LIST, node_block_list=list(keep))
    _drop_fp16_round_trips(model)
    _topological_sort(model.graph)
    onnx.save(model, str(out))
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    return out


def convert_int8_fp16(int8_onnx: Path, out: Path, keep: list[str] | tuple = ()) -> Path:
    """The INT8 Q/DQ graph with everything outside Q/DQ in FP16, for TensorRT 11: its networks are strongly
    typed, so the FP32-typed INT8 graph would run every layer it does not quantize in FP32. Scales become
    float16 too, which DequantizeLinear takes from opset 19 on (onnx's version converter moves the graph
    there); LayerNorm and Softmax stay in float32 as in the FP16 graph; inputs and outputs stay float32.
    Rounding in FP16 moves some values across a quantization step, so this is a graph of its own: the
    export gates it on valid before the bundle carries it, keeping the nodes `keep` FP32 where it must."""
    model = version_converter.convert_version(onnx.load(str(int8_onnx)), INT8_FP16_OPSET)
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_OP_BLOCK_LIST,
                                     node_block_list=list(keep))
    _drop_fp16_round_trips(model)
    _topological_sort(model.graph)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out))
    return out
