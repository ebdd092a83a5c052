"""Which parts of the network cost the most agreement with FP32 when quantized:
the ranking the INT8 search (export/int8_gate.py) keeps in float, most
sensitive first.

The unit is a block: the quantized operations that share a module path
(`/model/clinical_encoder/blocks.1/blocks.1.0`, one MobileNet inverted
residual with its squeeze-excitation; `/model/derm_encoder/layers.0/blocks.1`,
one Swin block; a head's `fc`). Each block is quantized *alone*, everything
else left in float, and the model's probabilities on valid cases are compared
with the FP32 model's: the normalised squared error sum((p - p_fp32)^2) /
sum(p_fp32^2), the proxy NNCF's accuracy control ranks its quantizers with. A
flip count would be the metric itself but is too coarse to rank on a few
dozen cases; the squared error sees every probability move, and the decisions
follow the probabilities.

Why blocks and not single operations: a measurement rebuilds the model (an
onnxruntime Q/DQ graph, about 0.5 s on a 2-core CPU; an OpenVINO model,
about 1 s to compile), and the tiny model has 82 Q/DQ layers and 131
OpenVINO-quantized operations but about 25 blocks. A block is also what a
layer's quantization noise travels through before the next one adds to it.
Each target ranks its own quantizer's blocks: NNCF quantizes the
squeeze-excitation and residual additions that the Q/DQ graph leaves in float,
and a ranking measured on one did not carry over to the other (tiny model,
valid split: the Q/DQ ranking's top 4 layers in float left NNCF's graph with
more flips than none).

The cases are the valid cases the fully quantized model moves most (NNCF's
subset selection), at most 32: those near a decision boundary, where one
block's noise can flip an answer. Far fewer cost decisions: on the tiny model's
121 valid cases, NNCF's four most sensitive blocks ranked on 24 cases left 3
seven-point flips, ranked on all 121 one. 32 and 64 cases gave the tiny
quickstart model the same four most sensitive blocks for both targets (so the
same graphs), and 32 took the two side-by-side searches 91 -> 80 s.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm import tqdm

RANKING_CASES = 32
METRIC = "normalised squared error of the probabilities against FP32, block quantized alone"


@dataclass
class Ranking:
    blocks: list[tuple[str, float]]       # (block, score), most sensitive first
    members: dict[str, list[str]]         # block -> its quantized operations
    cases: list[str]                      # valid case ids it was measured on
    seconds: float

    def top(self, count: int) -> list[str]:
        return [name for name, _ in self.blocks[:count]]

    def operations(self, blocks: list[str]) -> list[str]:
        return [op for block in blocks for op in self.members[block]]

    def describe(self, count: int) -> str:
        return ", ".join(f"{name} {score:.1e}" for name, score in self.blocks[:count])

    def to_dict(self) -> dict:
        return {"metric": METRIC, "cases": self.cases, "seconds": round(self.seconds, 1),
                "blocks": [{"block": name, "score": score, "operations": len(self.members[name])}
                           for name, score in self.blocks]}


def block_of(operation: str) -> str:
    """The module path an exported operation belongs to: '/model/<encoder>/<stage>/<block>'."""
    parts = operation.split("/")
    return "/".join(parts[:5]) if operation.startswith("/model/") else operation


def group_blocks(operations: list[str], block: Callable[[str], str] = block_of) -> dict[str, list[str]]:
    """Operations grouped by block (`block(operation)`), in first-seen order."""
    blocks: dict[str, list[str]] = {}
    for op in operations:
        blocks.setdefault(block(op), []).append(op)
    return blocks


def normalised_squared_error(probs: np.ndarray, reference: np.ndarray) -> float:
    return float(((probs - reference) ** 2).sum() / (reference ** 2).sum())


def ranking_cases(full_int8: np.ndarray, reference: np.ndarray, count: int = RANKING_CASES) -> np.ndarray:
    """Indices of the `count` cases the fully quantized model moves most, in case order."""
    error = ((full_int8 - reference) ** 2).sum(1)
    return np.sort(np.argsort(-error, kind="stable")[:count])


def rank_blocks(operations: list[str], predict_alone: Callable[[list[str]], np.ndarray], reference: np.ndarray,
                case_ids: list[str], progress: bool = True, block: Callable[[str], str] = block_of) -> Ranking:
    """Every block scored alone. `predict_alone(ops)` returns the probabilities, on the ranking cases, of the
    model with only `ops` quantized; `reference` holds the FP32 probabilities on the same cases."""
    started = time.perf_counter()
    members = group_blocks(operations, block)
    scores = [(name, _score_alone(predict_alone, ops, reference))
              for name, ops in tqdm(members.items(), desc="block sensitivity", unit="block", disable=not progress,
                                    leave=False)]
    scores.sort(key=lambda item: -item[1])
    return Ranking(scores, members, case_ids, time.perf_counter() - started)


def _score_alone(predict_alone: Callable[[list[str]], np.ndarray], ops: list[str], reference: np.ndarray) -> float:
    """A block's score; infinite when the model with it alone quantized cannot be compiled or run here. Found
    with oneDNN capped at AVX2 (`ONEDNN_MAX_CPU_ISA`): some clinical-only blocks, quantized alone, had no int8
    inner-product kernel and the whole export died in the ranking. Ranked first, such a block is the first
    kept in float, which is what lets the candidates compile."""
    try:
        return normalised_squared_error(predict_alone(ops), reference)
    except Exception:      # noqa: BLE001 - OpenVINO's and onnxruntime's compile errors carry no common type
        return float("inf")
