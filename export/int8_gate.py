"""INT8 that passes the gate by construction, where it can.

Every INT8 export is judged on the *valid* split against the FP32 model with
the same statistical gate `edgederm bench` applies on the device
(`edgederm.evaluation.gate`: paired bootstrap upper bound of the averaged-AUC
drop within the margin, categories, decision flips). The test split is left
for the final figures. The attempts, in order, stop at the first that passes:

- plain post-training quantization (what every INT8 export tries first);
- OpenVINO: NNCF's accuracy-controlled quantization with the margin as its
  maximum averaged-AUC drop on valid, which returns the most harmful
  operations to float;
- Jetson (TensorRT Q/DQ): the layers whose inputs quantize worst, measured on
  valid as the signal-to-quantization-noise ratio of each quantized input
  (onnxruntime's `qdq_loss_debug`), are left out of Q/DQ, 1, 2, 4, ... of
  them, up to a quarter of the quantized layers; TensorRT runs those layers
  in FP16 (its FP16 flag on 8.5-10) or FP32 (TensorRT 11's strongly typed
  network).

What was kept in float, and why, goes into the log and the manifest
(`int8_gate`). When no attempt passes, the export stops with one line and
writes no INT8 bundle (the caller builds bundles in a staged directory).

Why valid and not test: choosing among attempts by their score is a
selection, and selecting on the split that is reported would flatter it.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgederm.calibration.selection import CalibrationSet
from edgederm.errors import ConfigError
from edgederm.evaluation.gate import GateSettings, judge

MAX_EXCLUDED_SHARE = 0.25      # never keep more than a quarter of the quantized layers in float


class NoPassingInt8(ConfigError):
    """No INT8 graph kept the reference's accuracy on the valid split."""


@dataclass
class ValidSplit:
    """The valid split as the gate needs it, with the FP32 reference's probabilities on it."""
    clinical: np.ndarray
    dermoscopy: np.ndarray
    labels: np.ndarray
    case_ids: list[str]
    reference: np.ndarray
    settings: GateSettings

    def as_calibration_set(self, count: int = 32) -> CalibrationSet:
        """The first `count` valid cases in the calibration set's form (for the sensitivity measurement)."""
        return CalibrationSet(self.clinical[:count], self.dermoscopy[:count], self.case_ids[:count], "valid", 0)


@dataclass
class Attempt:
    method: str
    kept_in_float: list[str] = field(default_factory=list)
    why: str = ""
    result: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.result.get("verdict") == "pass"

    def describe(self) -> dict:
        auc, flips = self.result["auc"], self.result["flips"]
        return {"method": self.method, "kept_in_float": self.kept_in_float, "why": self.why,
                "verdict": self.result["verdict"], "reasons": self.result["reasons"],
                "auc_drop_points": auc["drop_points"], "ci_points": auc["ci_points"],
                "upper_bound_points": auc["upper_bound_points"],
                "diagnosis_flip_percent": flips["diagnosis"]["rate_percent"],
                "seven_point_flip_percent": flips["seven_point"]["rate_percent"]}


def judge_on_valid(valid: ValidSplit, attempt: Attempt, predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
                   log: Callable[[str], None]) -> Attempt:
    attempt.result = judge(valid.reference, predict(valid.clinical, valid.dermoscopy), valid.labels, valid.case_ids,
                           valid.settings)
    a = attempt.result["auc"]
    log(f"  {attempt.method}: valid AUC drop {a['drop_points']:.2f} points (95 % CI {a['ci_points'][0]:.2f} to "
        f"{a['ci_points'][1]:.2f}, upper bound {a['upper_bound_points']:.2f}, margin {valid.settings.max_auc_drop:g})"
        f" -> {attempt.result['verdict']}")
    return attempt


def record(attempts: list[Attempt], valid: ValidSplit) -> dict:
    """The manifest's `int8_gate`: every attempt, and which one the bundle holds."""
    chosen = next((i for i, a in enumerate(attempts) if a.passed), None)
    return {"split": "valid", "cases": len(valid.labels), "gate": valid.settings.describe(),
            "attempts": [a.describe() for a in attempts], "chosen": chosen}


def refuse(attempts: list[Attempt], valid: ValidSplit, target: str) -> NoPassingInt8:
    tried = "; ".join(f"{a.method}: {a.result['reasons'][0]}" for a in attempts)
    return NoPassingInt8(f"{target} int8: no INT8 graph passes the gate on the valid split ({len(valid.labels)} cases, "
                         f"margin {valid.settings.max_auc_drop:g} points); tried {tried}. No INT8 bundle written; "
                         "a larger valid split, more calibration cases or a wider --max-auc-drop may help")


# --- OpenVINO ------------------------------------------------------------------

def quantized_ops(model) -> set[str]:
    """Names of the operations an NNCF-quantized OpenVINO model feeds through FakeQuantize."""
    return {op.get_friendly_name() for op in model.get_ops()
            if any(v.get_node().get_type_name() == "FakeQuantize" for v in op.input_values())
            and op.get_type_name() != "FakeQuantize"}


def search_openvino(fp32_model, quantize: Callable[..., object], run: Callable[[object], Callable],
                    valid: ValidSplit, log: Callable[[str], None]) -> tuple[object, list[Attempt]]:
    """(the first passing INT8 model, every attempt). `quantize(model, accuracy_control: bool)` returns an
    INT8 model; `run(model)` returns a predict function for it."""
    plain = quantize(fp32_model.clone(), accuracy_control=False)
    attempts = [judge_on_valid(valid, Attempt("plain PTQ (NNCF)"), run(plain), log)]
    if attempts[0].passed:
        return plain, attempts
    log("  plain PTQ fails the gate on valid: NNCF accuracy control, margin as its maximum averaged-AUC drop")
    controlled = quantize(fp32_model.clone(), accuracy_control=True)
    reverted = sorted(quantized_ops(plain) - quantized_ops(controlled))
    attempt = Attempt("NNCF accuracy control", reverted,
                      f"plain PTQ failed the gate on valid ({attempts[0].result['reasons'][0]}); NNCF returned "
                      f"{len(reverted)} operation(s) that cost the most averaged AUC on valid to float")
    attempts.append(judge_on_valid(valid, attempt, run(controlled), log))
    return (controlled if attempt.passed else None), attempts


# --- Jetson (TensorRT Q/DQ) ------------------------------------------------------

def layer_sensitivity(fp32_onnx: Path, qdq_onnx: Path, reader_for: Callable[[], object],
                      quantized_types: list[str]) -> list[tuple[str, float]]:
    """(node name, SQNR dB of its worst quantized input) for every quantized layer, worst first.

    onnxruntime's qdq_loss_debug runs the Q/DQ graph with every Q/DQ pair's float input and output
    saved and compares each activation before and after its int8 grid: a low ratio means the int8 grid is
    too coarse for that tensor (a wide range with most values near zero, say). Node names are
    those of the FP32 graph, which the Q/DQ graph keeps."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )
    with tempfile.TemporaryDirectory(prefix="edgederm-sensitivity-") as tmp:
        augmented = Path(tmp) / "qdq.onnx"
        # Save what goes into each QuantizeLinear and comes out of each DequantizeLinear: the same
        # activation before and after its int8 grid.
        modify_model_output_intermediate_tensors(str(qdq_onnx), str(augmented),
                                                 op_types_for_saving=["QuantizeLinear", "DequantizeLinear"])
        matched = create_activation_matching(collect_activations(str(augmented), reader_for()))
    errors = {name: compute_signal_to_quantization_noice_ratio(m["pre_qdq"], m["post_qdq"])
              for name, m in matched.items()}
    worst: dict[str, float] = {}
    for node in onnx.load(str(fp32_onnx)).graph.node:
        if node.op_type in quantized_types:
            ratios = [errors[i] for i in node.input if i in errors]
            if ratios:
                worst[node.name] = min(ratios)
    return sorted(worst.items(), key=lambda item: item[1])


def search_jetson(quantize: Callable[[list[str]], Path], sensitivity: Callable[[Path], list[tuple[str, float]]],
                  run: Callable[[Path], Callable], valid: ValidSplit,
                  log: Callable[[str], None]) -> tuple[Path | None, list[Attempt]]:
    """(the first passing Q/DQ graph, every attempt). `quantize(excluded_nodes)` writes the Q/DQ graph and
    returns its path; `sensitivity(graph)` ranks its layers, worst first; `run(graph)` predicts with it."""
    graph = quantize([])
    attempts = [judge_on_valid(valid, Attempt("plain PTQ (symmetric Q/DQ)"), run(graph), log)]
    if attempts[0].passed:
        return graph, attempts
    ranking = sensitivity(graph)
    limit = max(1, int(len(ranking) * MAX_EXCLUDED_SHARE))
    log(f"  plain PTQ fails the gate on valid: leaving the layers that quantize worst out of Q/DQ "
        f"(up to {limit} of {len(ranking)})")
    for count in _exclusion_counts(limit):
        excluded = [name for name, _ in ranking[:count]]
        why = (f"plain PTQ failed the gate on valid ({attempts[0].result['reasons'][0]}); these layers' inputs have "
               f"the lowest signal-to-quantization-noise ratio on valid ("
               + ", ".join(f"{name} {db:.1f} dB" for name, db in ranking[:count]) + ")")
        graph = quantize(excluded)
        attempt = judge_on_valid(valid, Attempt(f"Q/DQ without the {count} most sensitive layer(s)", excluded, why),
                                 run(graph), log)
        attempts.append(attempt)
        if attempt.passed:
            return graph, attempts
    return None, attempts


def _exclusion_counts(limit: int) -> list[int]:
    """1, 2, 4, ... and the limit itself: few requantizations, and the largest allowed set is always tried."""
    counts = [1]
    while counts[-1] * 2 < limit:
        counts.append(counts[-1] * 2)
    return counts + ([limit] if limit > counts[-1] else [])
