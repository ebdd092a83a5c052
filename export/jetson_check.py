"""What TensorRT 10.3 (JetPack 6.1 / 6.2) needs of a Jetson bundle's graphs, checked here, without TensorRT.

No machine EdgeDerm is developed on has TensorRT, so the graphs are read
statically against the rules of TensorRT's ONNX parser (onnx-tensorrt's
operator table) and its explicit-quantization guide:

- opset: 17 at most for the operators used (TensorRT 10.3 reads opsets up to
  20; EdgeDerm exports 17);
- every operator one the parser imports (SUPPORTED_OPS);
- Q/DQ: int8, symmetric (zero points 0, the parser refuses others), every
  QuantizeLinear feeding DequantizeLinear nodes only, and every
  DequantizeLinear feeding exactly one consumer (a dedicated pair: a shared DQ
  output makes TensorRT choose one fusion and leave the other consumer in a
  slower form, and TensorRT 8.x rejected some shared patterns);
- weights: a float initializer through its own QuantizeLinear ->
  DequantizeLinear pair, per-channel along the output channels (axis 0) for
  Conv (the form onnxruntime's `AddQDQPairToWeight` writes and TensorRT 8.x
  required; an int8 initializer feeding a lone DequantizeLinear was refused);
- FP16 graph: LayerNormalization and Softmax computed in float32 (in FP16
  their sums overflow or lose the small probabilities), with float32 inputs
  and outputs;
- the TensorRT 11 INT8 graph (`model.int8.fp16.onnx`): the Q/DQ rules with
  float16 weights, opset 19 at most, and the FP16 graph's float32 islands.

`check_graph` returns the problems; `export` runs it on every Jetson graph it
writes and refuses the bundle when there is any (`GraphFormError`). The INT8
graph passes after `tensorrt_export.tensorrt_form`, which rewrites
onnxruntime's Q/DQ output (int8 weight initializers, shared DequantizeLinear
outputs) without changing what it computes.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgederm.errors import EdgeDermError

MAX_OPSET = 17
INT8_FP16_MAX_OPSET = 19     # the FP16-typed INT8 graph, for TensorRT 11 (float16 scales need opset 19)
# onnx-tensorrt's operator table for TensorRT 8.5 (docs/operators.md, "Y" rows) plus the operators TensorRT
# 8.6 / 10.x added that EdgeDerm's graphs use (LayerNormalization, GroupNormalization). Restricted to what
# an image classifier exports: a graph with anything else is worth a look before a Jetson gets it.
SUPPORTED_OPS = frozenset("""
Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape Conv
ConvTranspose Cos CumSum DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand Flatten Floor
Gather GatherElements GatherND Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual GroupNormalization
HardSigmoid HardSwish Identity InstanceNormalization LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
LpNormalization MatMul Max MaxPool Mean Min Mod Mul Neg Not Or Pad Pow PRelu QuantizeLinear Range Reciprocal
ReduceL1 ReduceL2 ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize Round
Selu Shape Sigmoid Sign Sin Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tanh
Tile TopK Transpose Trilu Unsqueeze Where
""".split())
FLOAT32_IN_FP16 = ("LayerNormalization", "Softmax")


class GraphFormError(EdgeDermError):
    """A Jetson graph that its TensorRT (10.3, or 11 for model.int8.fp16.onnx) would not take as it is."""


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            out[name].append(node)
    return out


def _common(model: onnx.ModelProto, max_opset: int = MAX_OPSET) -> list[str]:
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset > max_opset:
        problems.append(f"opset {opset}; EdgeDerm keeps this graph at opset {max_opset} or below")
    foreign = sorted({f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                      for n in model.graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED_OPS})
    if foreign:
        problems.append(f"operators TensorRT's ONNX parser does not import: {', '.join(foreign)}")
    return problems


def check_qdq(model: onnx.ModelProto, fp16: bool = False) -> list[str]:
    """Problems of an INT8 Q/DQ graph for TensorRT's explicit quantization (empty: none). `fp16`: the
    FP16-typed INT8 graph for TensorRT 11 (opset 19, float16 weights and scales, LayerNorm and Softmax
    in float32)."""
    graph = model.graph
    problems = _common(model, INT8_FP16_MAX_OPSET if fp16 else MAX_OPSET)
    weight_type = np.float16 if fp16 else np.float32
    inits = {t.name: t for t in graph.initializer}
    consumers = _consumers(graph)
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    if not quantize or not dequantize:
        return problems + ["no QuantizeLinear / DequantizeLinear nodes: not an INT8 Q/DQ graph"]
    for node in quantize + dequantize:
        if len(node.input) < 3 or node.input[2] not in inits:
            problems.append(f"{node.name}: no int8 zero point (TensorRT needs an explicit, zero zero point)")
            continue
        zero = numpy_helper.to_array(inits[node.input[2]])
        if zero.dtype != np.int8:
            problems.append(f"{node.name}: {zero.dtype} zero point (TensorRT takes int8 only)")
        elif zero.any():
            problems.append(f"{node.name}: non-zero zero point (TensorRT takes symmetric quantization only)")
    for node in quantize:
        users = consumers[node.output[0]]
        if any(u.op_type != "DequantizeLinear" for u in users):
            problems.append(f"{node.name}: QuantizeLinear feeds {sorted({u.op_type for u in users})}, "
                            "not DequantizeLinear only")
        if node.input[0] in inits:          # a weight's pair: per-channel on the output channels of a Conv
            weight = numpy_helper.to_array(inits[node.input[0]])
            if weight.dtype != weight_type:
                problems.append(f"{node.name}: weight {node.input[0]} is {weight.dtype}, not "
                                f"{np.dtype(weight_type).name} behind Q/DQ")
            conv = [c for d in users for c in consumers[d.output[0]] if c.op_type == "Conv"]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            scale = numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
            if conv and weight.ndim == 4 and weight.shape[0] > 1 and (
                    axis != 0 or scale is None or scale.size != weight.shape[0]):
                problems.append(f"{node.name}: Conv weight {node.input[0]} not quantized per output channel "
                                f"(axis {axis}, {0 if scale is None else scale.size} scale(s))")
    for node in dequantize:
        if node.input[0] in inits:
            problems.append(f"{node.name}: {numpy_helper.to_array(inits[node.input[0]]).dtype} initializer "
                            "into a lone DequantizeLinear; weights need their own QuantizeLinear -> "
                            "DequantizeLinear pair")
        users = consumers[node.output[0]]
        if len(users) != 1:
            problems.append(f"{node.name}: DequantizeLinear output shared by {len(users)} nodes "
                            f"({', '.join(sorted(u.op_type for u in users))}); each consumer needs its own pair")
    if fp16:
        problems += _float32_islands(model)
    return problems


def check_fp16(model: onnx.ModelProto) -> list[str]:
    """Problems of the FP16-typed graph (TensorRT 11 builds it as typed; 8.6-10 with the FP16 flag)."""
    graph = model.graph
    problems = _common(model)
    float32 = onnx.TensorProto.FLOAT
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type != float32:
            problems.append(f"{value.name}: graph input/output is not float32")
    if not any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer):
        problems.append("no float16 weights: not an FP16 graph")
    return problems + _float32_islands(model)


def _float32_islands(model: onnx.ModelProto) -> list[str]:
    """LayerNormalization and Softmax inside an FP16-typed graph must compute in float32."""
    graph, problems = model.graph, []
    float32 = onnx.TensorProto.FLOAT
    typed = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.input)}
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type not in FLOAT32_IN_FP16:
            continue
        source = producers.get(node.input[0])
        from_cast = source is not None and source.op_type == "Cast" and any(
            a.name == "to" and a.i == float32 for a in source.attribute)
        if not from_cast and typed.get(node.input[0]) != float32:
            problems.append(f"{node.name}: {node.op_type} computes in float16; keep it in float32")
    return problems


def check_graph(path: Path) -> list[str]:
    """The problems of a Jetson bundle graph (`model.int8.onnx`, `model.fp16.onnx` or the TensorRT 11
    `model.int8.fp16.onnx`), each naming the node."""
    model = onnx.load(str(path))
    if ".int8." in path.name:
        return check_qdq(model, fp16=path.name.endswith(".fp16.onnx"))
    return check_fp16(model)
