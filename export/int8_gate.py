"""INT8 that keeps the FP32 model's decisions, by construction where it can.

Every INT8 export is judged on the *valid* split against the FP32 model with
the same statistical gate `edgederm bench` applies on the device
(`edgederm.scoring.gate`): the averaged-AUC drop's upper bound within the
margin, no category significantly worse, and decisions kept: at most
`--max-flip-rate` (default 2 %) of cases with a different top diagnosis or
seven-point reading, and at most half of it to be chosen (SELECTION_SHARE
below), no significant loss of melanomas referred. The test
split is left for the final figures. The attempts, in order, stop at the
first that passes:

1. plain post-training quantization (NNCF for OpenVINO; symmetric Q/DQ from
   onnxruntime.quantization for TensorRT);
2. quantization-aware fine-tuning distilled from the FP32 model (export/qat.py; `--no-qat` skips
   it): one student trained on the train split for both targets, a light encoder in float, judged
   like any other graph;
3. the blocks whose quantization alone moves the probabilities most
   (export/sensitivity.py, measured on valid with the target's own
   quantizer) kept in float, 1, 2, 4, ... of them, up to a quarter of the
   blocks; TensorRT runs them in FP16 (its FP16 flag on 8.5-10) or FP32
   (TensorRT 11's strongly typed network);
4. OpenVINO, when asked (`--accuracy-control`): NNCF's accuracy-controlled
   quantization with agreement with the FP32 decisions as its metric (it
   returns its own most harmful quantizers to float until the flip limit
   holds). Not by default: it re-ranks every quantizer after each revert,
   minutes on a 2-core CPU for the tiny model, and there (NNCF's default
   model type) it reverted operation after operation without bringing the
   seven-point flips within the limit.

Why QAT before the blocks in float, though it costs minutes (about one for the quickstart model on
a 2-core CPU) where a block set costs seconds: the block search is a selection among up to five
graphs, each a little worse at new cases than at the valid cases it was chosen on, and QAT is one
graph trained not to disagree. On the quickstart model (240 valid cases, 234 test cases) OpenVINO
with 7 blocks in float passed on valid (0.8 % / 0.4 % of diagnoses / seven-point readings flipped)
and failed on test (2.1 % of diagnoses flipped, a significant DIAG SK drop); the QAT student flipped
0.4 % / 0.0 % on valid and none on test, in OpenVINO and as the Q/DQ graph alike.

What was kept in float, and why, goes into the log and the manifest
(`int8_gate`, with the sensitivity ranking). When no attempt passes, the
export stops with one line and writes no INT8 bundle (the caller builds
bundles in a staged directory).

Why valid and not test: choosing among attempts by their score is a
selection, and selecting on the split that is reported would flatter it.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgederm.errors import ConfigError
from edgederm.export.sensitivity import Ranking, block_of, group_blocks, rank_blocks, ranking_cases
from edgederm.scoring.gate import GateSettings, judge

METHOD_QAT = "QAT distilled from FP32"
# `--int8-method`: the search (default), or one attempt on purpose. Which attempt a search reaches depends on
# how plain PTQ fares, and so on the CPU (training is bit-reproducible per CPU, not across CPUs); forcing one
# is how the tests run every path on every CPU, and how a user compares them on their own model.
INT8_METHODS = ("search", "ptq", "qat", "blocks")
MAX_EXCLUDED_SHARE = 0.25      # never keep more than a quarter of the blocks in float
# An attempt is chosen on valid only if it also keeps its flips within half the limit. Choosing the first
# graph that passes is a selection, and a selected graph changes more decisions on new cases than on the
# cases it was chosen on (tiny model: OpenVINO with 1 block in float, 0.8 % diagnosis flips on valid, 2.6 %
# on test; 112 px: 0.0 % on valid, 3.0 % on test). Half the limit leaves room for that regression.
SELECTION_SHARE = 0.5


class NoPassingInt8(ConfigError):
    """No INT8 graph kept the reference's accuracy on the valid split."""


@dataclass
class ValidSplit:
    """The valid split as the gate needs it, with the FP32 reference's probabilities on it."""
    inputs: tuple[np.ndarray, ...]     # one array per model input, in the model's order
    labels: np.ndarray
    case_ids: list[str]
    reference: np.ndarray
    settings: GateSettings
    calibration: dict | None = None   # the model's fitted reading: decisions judged as the device reads them

    def predictions(self, predict: Callable[..., np.ndarray], indices: np.ndarray | None = None) -> np.ndarray:
        """`predict(*inputs)` on every valid case, or on `indices`."""
        if indices is None:
            return predict(*self.inputs)
        return predict(*(x[indices] for x in self.inputs))


@dataclass
class Attempt:
    method: str
    kept_in_float: list[str] = field(default_factory=list)
    why: str = ""
    result: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)      # what the method itself records (QAT: export/qat.py)
    kept_operations: list[str] = field(default_factory=list)    # the operations of kept_in_float's blocks, when known

    @property
    def passed(self) -> bool:
        return self.result.get("verdict") == "pass"

    def describe(self) -> dict:
        if "auc" not in self.result:        # refused before it ran (not loadable, not in the target's form)
            return {"method": self.method, "kept_in_float": self.kept_in_float, "why": self.why,
                    "verdict": self.result["verdict"], "reasons": self.result["reasons"], **self.details}
        auc, flips = self.result["auc"], self.result["flips"]
        return {"method": self.method, "kept_in_float": self.kept_in_float, "why": self.why,
                "verdict": self.result["verdict"], "reasons": self.result["reasons"],
                "auc_drop_points": auc["drop_points"], "ci_points": auc["ci_points"],
                "upper_bound_points": auc["upper_bound_points"],
                "diagnosis_flip_percent": flips["diagnosis"]["rate_percent"],
                "seven_point_flip_percent": flips["seven_point"]["rate_percent"],
                "net_away_percent": {k: f["net_away_percent"] for k, f in flips.items()},
                "confident_flips": {k: f["confident_flips"] for k, f in flips.items()},
                "melanoma_sensitivity": self.result["melanoma_sensitivity"], **self.details}


def judge_on_valid(valid: ValidSplit, attempt: Attempt, probabilities: np.ndarray,
                   log: Callable[[str], None]) -> Attempt:
    """The gate on valid, with the selection margin on the flips (SELECTION_SHARE)."""
    attempt.result = judge(valid.reference, probabilities, valid.labels, valid.case_ids, valid.settings,
                           valid.calibration)
    a, f = attempt.result["auc"], attempt.result["flips"]
    limit = _selection_limit(valid.settings)
    if limit is not None:
        over = [f"{key.replace('_', '-')} flips {x['rate_percent']:.1f} % of valid cases > {limit:g} % (half the "
                "limit: a graph chosen for passing on valid changes more decisions on new cases)"
                for key, x in f.items() if x["rate_percent"] > limit]
        if over and attempt.result["verdict"] == "pass":
            attempt.result["verdict"] = "fail"
        attempt.result["reasons"] += [r for r in over if r not in attempt.result["reasons"]]
    log(f"  {attempt.method}: valid AUC drop {a['drop_points']:.2f} points (upper bound {a['upper_bound_points']:.2f}, "
        f"margin {valid.settings.max_auc_drop:g}); flips {f['diagnosis']['rate_percent']:.1f} % of diagnoses "
        f"({f['diagnosis']['confident_flips']} confident), {f['seven_point']['rate_percent']:.1f} % of seven-point "
        f"readings ({f['seven_point']['confident_flips']} confident; limit "
        f"{_limit(valid.settings)}, {'none' if limit is None else f'{limit:g} %'} to be chosen) -> "
        f"{attempt.result['verdict']}")
    return attempt


def refused(attempt: Attempt, reason: str, log: Callable[[str], None]) -> Attempt:
    """`attempt` failed before it could be judged (its graph could not be built, loaded, run or checked)."""
    attempt.result = {"verdict": "fail", "reasons": [reason]}
    log(f"  {attempt.method}: refused, {reason}")
    return attempt


def _one_line(error: Exception) -> str:
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:300]}"


def _built(build: Callable[[], object]) -> tuple[object | None, str]:
    """(what `build()` returns, "") or (None, why it failed): a candidate that cannot be made is refused, and the
    search goes on."""
    try:
        return build(), ""
    except Exception as error:      # noqa: BLE001 - whatever NNCF or the exporter raises, the candidate is out
        return None, f"no graph ({_one_line(error)})"


def judge_candidate(valid: ValidSplit, attempt: Attempt, probabilities: Callable[[], np.ndarray],
                    log: Callable[[str], None]) -> Attempt:
    """`judge_on_valid` on `probabilities()`, which builds, loads and runs the candidate: a graph that
    onnxruntime or OpenVINO cannot load or run is a refused attempt with the reason, and the search goes
    on (an export never dies of one candidate)."""
    try:
        result = probabilities()
    except Exception as error:      # noqa: BLE001 - whatever the runtime raises, the candidate is out
        return refused(attempt, f"could not be built, loaded or run ({_one_line(error)})", log)
    return judge_on_valid(valid, attempt, result, log)


def _limit(settings: GateSettings) -> str:
    return "none" if settings.max_flip_rate is None else f"{settings.max_flip_rate:g} %"


def _selection_limit(settings: GateSettings) -> float | None:
    """The flip rate an attempt must keep on valid to be chosen; None when flips are not gated (100 % or off)."""
    if settings.max_flip_rate is None or settings.max_flip_rate >= 100:
        return None
    return SELECTION_SHARE * settings.max_flip_rate


def record(attempts: list[Attempt], valid: ValidSplit, ranking: Ranking | None) -> dict:
    """The manifest's `int8_gate`: every attempt, which one the bundle holds, and the sensitivity ranking."""
    chosen = len(attempts) - 1 if attempts and attempts[-1].passed else None     # a search stops at its pass
    return {"split": "valid", "cases": len(valid.labels), "gate": valid.settings.describe(),
            "attempts": [a.describe() for a in attempts], "chosen": chosen,
            "sensitivity": None if ranking is None else ranking.to_dict()}


def refuse(attempts: list[Attempt], valid: ValidSplit, target: str) -> NoPassingInt8:
    tried = "; ".join(f"{a.method}: {a.result['reasons'][0]}" for a in attempts)
    return NoPassingInt8(f"{target} int8: no INT8 graph passes the gate on the valid split ({len(valid.labels)} cases, "
                         f"margin {valid.settings.max_auc_drop:g} points, flip limit {_limit(valid.settings)}); "
                         f"tried {tried}. No INT8 bundle written; a larger valid split, more calibration cases or a "
                         "wider --max-auc-drop / --max-flip-rate may help")


def _because(plain: Attempt | None, method: str) -> str:
    """Why an attempt after plain PTQ is made: plain PTQ's failure, or the user's --int8-method."""
    if method != "search" or plain is None:
        return f"asked for (--int8-method {method})"
    return f"plain PTQ failed the gate on valid ({plain.result['reasons'][0]})"


def _excluded(because: str, ranking: Ranking, count: int) -> str:
    return (f"{because}; these blocks move the probabilities most when quantized alone "
            f"({ranking.describe(count)}; {len(ranking.cases)} valid cases)")


def _rank(operations: list[str], predict_alone: Callable[[list[str]], np.ndarray], plain: np.ndarray,
          valid: ValidSplit, log: Callable[[str], None]) -> Ranking:
    """The target's blocks ranked by their quantization alone, on the valid cases plain PTQ moves most."""
    cases = ranking_cases(plain, valid.reference)
    ranking = rank_blocks(operations, lambda ops: predict_alone(ops, cases), valid.reference[cases],
                          [valid.case_ids[i] for i in cases])
    log(f"  sensitivity: {len(ranking.blocks)} blocks, each quantized alone, on the {len(cases)} valid cases plain "
        f"PTQ moves most ({ranking.seconds:.0f} s); most sensitive: {ranking.describe(3)}")
    return ranking


def _qat_attempt(because: str, details: dict) -> Attempt:
    in_float = details.get("in_float", [])
    return Attempt(METHOD_QAT, in_float, f"{because}: the quantized network fine-tuned on the train split to agree "
                   "with the FP32 model" + (f"; {', '.join(in_float)} in float (a light encoder: little time, much "
                                            "of the disagreement)" if in_float else ""), details={"qat": details})


def check_method(method: str, qat: bool) -> None:
    """`--int8-method` against the request (`qat`: QAT turned on): the exporter checks it before any work,
    and each search again for its own callers."""
    if method not in INT8_METHODS:
        raise ConfigError(f"--int8-method {method!r}: one of {', '.join(INT8_METHODS)}")
    if method == "qat" and not qat:
        raise ConfigError("--int8-method qat asks for quantization-aware fine-tuning and --no-qat turns it off: "
                          "drop one of them")


def _plain_step(valid: ValidSplit, name: str, probabilities: Callable[[], np.ndarray], method: str,
                log: Callable[[str], None]) -> tuple[list[Attempt], Attempt | None, np.ndarray | None, bool]:
    """Plain PTQ as `method` wants it: (the attempts so far, its attempt, its probabilities (None when it could
    not run or was skipped), whether the search ends here). Judged and listed first (search, ptq), judged only
    to rank the blocks (blocks: not a candidate itself), or skipped (qat)."""
    if method == "qat":
        return [], None, None, False
    kept: list[np.ndarray] = []

    def run() -> np.ndarray:
        kept.append(probabilities())
        return kept[0]
    if method == "blocks":
        log(f"  {name}: ranks the blocks (--int8-method blocks: not a candidate itself)")
    attempt = judge_candidate(valid, Attempt(name), run, log)
    probs = kept[0] if kept else None
    if method == "blocks":
        return [], attempt, probs, False
    return [attempt], attempt, probs, attempt.passed or method == "ptq"


def exclusion_search(ranking: Ranking, plain: Attempt | None, build: Callable[[list[str]], np.ndarray],
                     valid: ValidSplit, log: Callable[[str], None], attempts: list[Attempt],
                     method: Callable[[int], str] = lambda count: f"{count} most sensitive block(s) in float",
                     why: Callable[[int], str] | None = None) -> int | None:
    """Keep the top 1, 2, 4, ... blocks in float (up to MAX_EXCLUDED_SHARE of them); `build(blocks)` makes
    that model and returns its valid probabilities; `method(count)` and `why(count)` name and explain each
    attempt (default: INT8's, after `plain` failed). Appends every attempt to `attempts` (one whose graph
    cannot be built or run is refused, and the search goes on); returns the passing count, or None."""
    limit = max(1, int(len(ranking.blocks) * MAX_EXCLUDED_SHARE))
    for count in _exclusion_counts(limit):
        blocks = ranking.top(count)
        reason = _excluded(_because(plain, "search"), ranking, count) if why is None else why(count)
        attempt = judge_candidate(valid, Attempt(method(count), blocks, reason), lambda: build(blocks), log)
        attempts.append(attempt)
        if attempt.passed:
            return count
    return None


# --- OpenVINO ------------------------------------------------------------------

def quantized_ops(model) -> set[str]:
    """Names of the operations an NNCF-quantized OpenVINO model feeds through FakeQuantize."""
    return {op.get_friendly_name() for op in model.get_ops()
            if any(v.get_node().get_type_name() == "FakeQuantize" for v in op.input_values())
            and op.get_type_name() != "FakeQuantize"}


def search_openvino(fp32_model, plain, keep_in_float: Callable[[object, list[str]], object],
                    run: Callable[[object], Callable], accuracy_control: Callable[[], object] | None,
                    valid: ValidSplit, log: Callable[[str], None],
                    qat: Callable[[], tuple[object, dict]] | None = None, method: str = "search"
                    ) -> tuple[object, list[Attempt], Ranking | None]:
    """(the first passing INT8 model or None, every attempt, the sensitivity ranking). `plain` is NNCF's
    INT8 model; `keep_in_float(model, names)` returns a copy with those operations' blocks in float;
    `run(model)` returns a predict function; `qat()`, when given, returns the QAT student's model and its
    record (export/qat.py); `accuracy_control()`, when given, returns NNCF's agreement-controlled model.
    `method` (INT8_METHODS): the whole search, or only the attempt named."""
    check_method(method, qat is not None)
    attempts, first, plain_probs, done = _plain_step(valid, "plain PTQ (NNCF)", lambda: valid.predictions(run(plain)),
                                                     method, log)
    if done:
        return (plain if first.passed else None), attempts, None
    because = _because(first, method)
    if method in ("search", "qat") and qat is not None:
        student, reason = _built(qat)
        if student is None:
            attempt = refused(_qat_attempt(because, {}), reason, log)
        else:
            student, details = student
            attempt = judge_candidate(valid, _qat_attempt(because, details), lambda: valid.predictions(run(student)),
                                      log)
        attempts.append(attempt)
        if attempt.passed or method == "qat":
            return (student if attempt.passed else None), attempts, None
    if plain_probs is None:         # plain PTQ could not run: nothing to rank the blocks by
        return None, attempts, None
    operations = sorted(quantized_ops(plain))
    blocks = group_blocks(operations)

    def alone(ops: list[str], cases: np.ndarray) -> np.ndarray:
        mine = block_of(ops[0])
        return valid.predictions(run(keep_in_float(plain, [b for b in blocks if b != mine])), cases)

    ranking = _rank(operations, alone, plain_probs, valid, log)
    count = exclusion_search(ranking, first, lambda blocks: valid.predictions(
        run(keep_in_float(plain, blocks))), valid, log, attempts, why=lambda count: _excluded(because, ranking, count))
    if count is not None:
        return keep_in_float(plain, ranking.top(count)), attempts, ranking
    if accuracy_control is None or method != "search":
        return None, attempts, ranking
    log("  no block set passes: NNCF accuracy control, agreement with the FP32 decisions as its metric")
    attempt = Attempt("NNCF accuracy control (agreement)", [],
                      f"{because} and no set of up to {MAX_EXCLUDED_SHARE:.0%} of the blocks passed; NNCF returns the "
                      "operations that cost the most agreement on valid to float")
    controlled, reason = _built(accuracy_control)
    if controlled is None:
        attempts.append(refused(attempt, reason, log))
        return None, attempts, ranking
    attempt.kept_in_float = sorted(set(operations) - quantized_ops(controlled))
    attempts.append(judge_candidate(valid, attempt, lambda: valid.predictions(run(controlled)), log))
    return (controlled if attempt.passed else None), attempts, ranking


# --- Jetson (TensorRT Q/DQ) ------------------------------------------------------

def search_jetson(quantizer, out: Path, run: Callable[[Path], Callable], valid: ValidSplit,
                  log: Callable[[str], None], qat: Callable[[Path], tuple[list[str], dict]] | None = None,
                  method: str = "search") -> tuple[Path | None, list[Attempt], Ranking | None]:
    """(the first passing Q/DQ graph at `out` or None, every attempt, the sensitivity ranking).
    `quantizer` is an export.tensorrt_export.QdqQuantizer; `run(graph)` returns a predict function;
    `qat(out)`, when given, writes the QAT student's Q/DQ graph at `out` and returns the problems
    export/jetson_check.py finds in it and the student's record: a graph with problems is refused before
    anything loads it. `method` (INT8_METHODS): the whole search, or only the attempt named."""
    check_method(method, qat is not None)
    attempts, first, plain, done = _plain_step(valid, "plain PTQ (symmetric Q/DQ)",
                                               lambda: valid.predictions(run(quantizer.quantize(out))), method, log)
    if done:
        return (out if first.passed else None), attempts, None
    because = _because(first, method)
    if method in ("search", "qat") and qat is not None:
        attempt = _qat_student(qat, out, run, valid, because, log)
        attempts.append(attempt)
        if attempt.passed or method == "qat":
            return (out if attempt.passed else None), attempts, None
    if plain is None:
        return None, attempts, None
    with tempfile.TemporaryDirectory(prefix="edgederm-sensitivity-") as tmp:
        one = Path(tmp) / "alone.onnx"
        ranking = _rank(quantizer.layers(), lambda ops, cases: valid.predictions(
            run(quantizer.quantize(one, only=ops, check=False)), cases), plain, valid, log)

    def build(blocks: list[str]) -> np.ndarray:
        return valid.predictions(run(quantizer.quantize(out, exclude=ranking.operations(blocks))))

    count = exclusion_search(ranking, first, build, valid, log, attempts,
                             why=lambda count: _excluded(because, ranking, count))
    if count is None:
        return None, attempts, ranking
    return quantizer.quantize(out, exclude=ranking.operations(ranking.top(count))), attempts, ranking


def _qat_student(qat: Callable[[Path], tuple[list[str], dict]], out: Path, run: Callable[[Path], Callable],
                 valid: ValidSplit, because: str, log: Callable[[str], None]) -> Attempt:
    """The QAT attempt for Jetson: the student's Q/DQ graph written at `out`, refused unread when it is not in
    TensorRT's form (an op onnxruntime may not even load, such as NNCF's own FakeQuantize), else judged."""
    built, reason = _built(lambda: qat(out))
    if built is None:
        return refused(_qat_attempt(because, {}), reason, log)
    problems, details = built
    attempt = _qat_attempt(because, details)
    if problems:       # a graph TensorRT would not take is no candidate, whatever its score: not even loaded
        return refused(attempt, f"not in TensorRT's form ({len(problems)} problem(s), first: {problems[0]})", log)
    return judge_candidate(valid, attempt, lambda: valid.predictions(run(out)), log)


def _exclusion_counts(limit: int) -> list[int]:
    """1, 2, 4, ... and the limit itself: few requantizations, and the largest allowed set is always tried."""
    counts = [1]
    while counts[-1] * 2 < limit:
        counts.append(counts[-1] * 2)
    return counts + ([limit] if limit > counts[-1] else [])
