"""Which operations a graph typed FP16 keeps in FP32, so that it keeps the FP32 model's decisions.

TensorRT 11 builds strongly typed networks: the precision of every layer is the graph's own. The
Jetson bundle carries two such graphs: `model.fp16.onnx` (everything in FP16) and, beside the INT8
Q/DQ graph, `model.int8.fp16.onnx` (the same graph typed FP16 outside Q/DQ). FP16 rounding is not
free: on the real release the FP16-typed INT8 graph of `edge` changed 8.9 % of the valid diagnoses,
more than INT8 itself. So each typed graph is judged on valid by the INT8 gate
(export/int8_gate.py: AUC margin, flips, the selection limit), and when it fails, the blocks that
lose the decisions stay in FP32, found as the INT8 search finds its blocks:

1. the whole graph typed FP16 (LayerNormalization and Softmax always FP32, with onnxruntime's own
   block list of operations that have no FP16 kernel);
2. each block (a module path, export/sensitivity.py) typed FP16 *alone*, everything else FP32, and
   scored by the normalised squared error of its probabilities against FP32 on the valid cases
   the whole typed graph moves most; then the top 1, 2, 4, ... blocks kept in FP32
   (`node_block_list`: Cast nodes at their borders) until the gate passes, up to a quarter of them.

A graph that still fails is left out of the bundle, with every attempt in the manifest. Blocks are
what the issue's suspects live in (attention logits before the Softmax, BatchNorm-folded scales,
the squeeze-excitation gates, the average pooling of large maps): the ranking names which of them
matter for the model at hand instead of guessing.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from edgederm.export import int8_gate
from edgederm.export.sensitivity import block_of, rank_blocks, ranking_cases

METRIC = "normalised squared error of the probabilities against FP32, block typed FP16 alone"
# Every typed operation outside the network's modules is one block: the per-task softmaxes and the branch
# averaging, a TTA graph's view stacking, and the Identity nodes the exporter leaves. Ranked one by one they were
# 98 of the tiny model's 141 blocks, each a full conversion (about 3 s on a 2-core CPU), and none is where FP16
# loses a decision (what FP16 cannot compute, Softmax and LayerNormalization, is never typed).
OUTSIDE_THE_NETWORK = "(outside the network's modules)"
# never typed FP16 in any graph: no FP16 kernels (onnxruntime's list) or FP16 loses them (ours)
_NOT_TYPED = {"QuantizeLinear", "DequantizeLinear", "Constant", "Shape", "Cast"}


def typed_operations(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes the FP16 conversion types FP16: candidates for FP32."""
    from edgederm.export.tensorrt_export import FP16_OP_BLOCK_LIST
    return [n.name for n in model.graph.node
            if n.name and n.op_type not in _NOT_TYPED and n.op_type not in FP16_OP_BLOCK_LIST]


def float32_operations(model: onnx.ModelProto, kept: list[str]) -> list[str]:
    """Every node a graph typed FP16 with `kept` in FP32 still computes in FP32: `kept`, and the operations the
    conversion never types (FP16_OP_BLOCK_LIST: LayerNormalization, Softmax, TopK, ...). What TensorRT 10 must pin
    to FP32 (edgederm/runtime/engine.py) to run the typed graph the gate judged from the FP32-typed one."""
    from edgederm.export.tensorrt_export import FP16_OP_BLOCK_LIST
    mine = set(kept)
    return [n.name for n in model.graph.node if n.name and (n.name in mine or n.op_type in FP16_OP_BLOCK_LIST)]


def _block(operation: str) -> str:
    return block_of(operation) if operation.startswith("/model/") else OUTSIDE_THE_NETWORK


def search(source: Path, out: Path, convert: Callable[[Path, Path, list[str]], Path],
           predict: Callable[[Path], Callable[..., np.ndarray]], valid: int8_gate.ValidSplit, name: str,
           log: Callable[[str], None]) -> tuple[Path | None, list[int8_gate.Attempt], dict | None]:
    """(the typed graph at `out` that passes, or None; every attempt; the ranking as the manifest keeps it).
    `convert(source, out, keep)` writes `source` typed FP16 with the nodes `keep` in FP32; `predict(graph)`
    returns a predict function."""
    typed = valid.predictions(predict(convert(source, out, [])))
    attempts = [int8_gate.judge_on_valid(valid, int8_gate.Attempt(name), typed, log)]
    if attempts[0].passed:
        return out, attempts, None
    operations = typed_operations(onnx.load(str(source)))
    cases = ranking_cases(typed, valid.reference)
    with tempfile.TemporaryDirectory(prefix="edgederm-fp16-") as tmp:
        alone = Path(tmp) / "alone.onnx"

        def typed_alone(ops: list[str]) -> np.ndarray:
            mine = set(ops)
            graph = convert(source, alone, [op for op in operations if op not in mine])
            return valid.predictions(predict(graph), cases)

        ranking = rank_blocks(operations, typed_alone, valid.reference[cases], [valid.case_ids[i] for i in cases],
                              block=_block)
    log(f"  FP16 sensitivity: {len(ranking.blocks)} blocks, each typed FP16 alone, on the {len(cases)} valid cases "
        f"the typed graph moves most ({ranking.seconds:.0f} s); most sensitive: {ranking.describe(3)}")
    record = {**ranking.to_dict(), "metric": METRIC}
    failed = attempts[0].result["reasons"][0]

    def build(blocks: list[str]) -> np.ndarray:      # the last one built is the one kept at `out`
        return valid.predictions(predict(convert(source, out, ranking.operations(blocks))))

    count = int8_gate.exclusion_search(
        ranking, attempts[0], build, valid, log, attempts,
        method=lambda count: f"{name}, {count} most sensitive block(s) in FP32",
        why=lambda count: (f"typed FP16 whole, the graph failed the gate on valid ({failed}); these blocks move "
                           f"the probabilities most when typed FP16 alone ({ranking.describe(count)})"))
    if count is not None:
        attempts[-1].kept_operations = ranking.operations(ranking.top(count))
        return out, attempts, record
    out.unlink(missing_ok=True)
    return None, attempts, record


def describe(graph: Path | None, attempts: list[int8_gate.Attempt], ranking: dict | None,
             source: Path | None = None) -> dict:
    """The manifest's record of one typed graph: whether the gate passed it (`gate`), the blocks it keeps FP32 and,
    with `source` (the graph it was typed from), every node it computes in FP32 (`float32_operations`), which a
    TensorRT 10 build pins (edgederm/runtime/engine.py). `attempts` empty: a graph typed whole, never judged."""
    chosen = attempts[-1] if attempts and attempts[-1].passed else None
    kept = [] if chosen is None else chosen.kept_operations
    fp32 = None if source is None else float32_operations(onnx.load(str(source), load_external_data=False), kept)
    return {"graph": None if graph is None else graph.name, "for": "TensorRT 11 (strongly typed)",
            "gate": "passed" if chosen is not None else "failed",
            "kept_in_float32": [] if chosen is None else chosen.kept_in_float, "fp32_operations": fp32,
            "attempts": [a.describe() for a in attempts], "sensitivity": ranking,
            "valid": attempts[-1].describe() if attempts else None}
