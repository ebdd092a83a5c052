"""INT8 methods side by side: which keeps the FP32 model's decisions, at what speed.

For one trained run and a release, every method builds its INT8 model from the
same calibration cases (the train split, as `edgederm export` chooses them),
is judged on the valid split exactly as the export judges it (AUC margin 1
point, at most 2 % of cases with a different top diagnosis or seven-point
reading), and is then scored on the test split against PyTorch FP32: AUC
difference with its paired-bootstrap 95 % interval, flip rates, melanomas the
seven-point reading refers. Latency is the model call at batch 1 on this CPU,
timed round-robin over the methods with the runs pooled (this 2-core machine
has slow spells), beside the FP32 model on the same runtime; minutes are the
time to produce the model, search included.

Methods. OpenVINO (NNCF post-training quantization): NNCF's default model
type; its transformer type (SmoothQuant, and elementwise operations such as
squeeze-excitation scales and residual additions left in float), which the
export uses for every EdgeDerm model (attention blocks); the export's type with
full bias correction, and with symmetric activations (the PERFORMANCE
preset); the most sensitive blocks kept in float (the export's search,
export/int8_gate.py) on either type; with --accuracy-control, NNCF accuracy
control on agreement (minutes). TensorRT's symmetric Q/DQ graph, run by
onnxruntime on this CPU (its latency here says nothing of a Jetson's): plain
MinMax calibration; percentile calibration; the most sensitive blocks kept out
of Q/DQ. Quantization-aware fine-tuning distilled from FP32 (export/qat.py, the
export's third attempt): one student per row pair, exported to OpenVINO and to
the Q/DQ graph, with every encoder quantized and with the light encoder in float
(the export's default; one row where the light share leaves no encoder in float,
as on `edge`). `--qat-setting LABEL=FIELD:VALUE,...` adds a student trained with
other QatSettings (the syntax of qat_curves.py's --setting), in OpenVINO and,
where its quantizers are signed, as the Q/DQ graph.

    python benchmarks/dev/int8_methods.py --run quickstart/runs/tiny --data quickstart/synth

On the real release: --run RUN --data /path/to/release_v0 --name real-int8-methods
(the valid and test splits are read as `edgederm export` reads them). Prints the
table; writes benchmarks/results/NAME.md and .json (NAME: int8-methods unless
--name; --results for another folder).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import openvino as ov
from qat_curves import parse_setting, read_result   # benchmarks/dev: the same LABEL=FIELD:VALUE syntax, file reader

from edgederm.benchmarks.host import host_facts
from edgederm.calibration.selection import build_calibration_set
from edgederm.data.inputs import load_arrays
from edgederm.data.release import read_release
from edgederm.errors import ConfigError
from edgederm.scoring.calibration import stored_calibration
from edgederm.scoring.gate import GateSettings, judge
from edgederm.export import int8_gate, openvino_export, qat
from edgederm.export.onnx_export import export_onnx, run_torch
from edgederm.export.onnxruntime_scoring import onnxruntime_session, run_onnx
from edgederm.export.tensorrt_export import QdqQuantizer
from edgederm.models.io import load_model, read_metadata
from edgederm.runtime.openvino_backend import GATED_PRECISION, compile_static

RESULTS = Path(__file__).resolve().parents[1] / "results"
FP32_REFERENCES = ("OpenVINO FP32", "onnxruntime FP32")       # each runtime's speed reference


@dataclass
class Method:
    name: str
    runtime: str                                   # "openvino" or "onnxruntime"
    predict: Callable | None = None                # (clinical, dermoscopy) -> probabilities; None: refused
    single: Callable | None = None                 # one batch-1 call, for timing
    kept_in_float: list[str] = field(default_factory=list)
    minutes: float = 0.0
    note: str = ""
    times_ms: list[float] = field(default_factory=list)


def _arrays(release, split, preprocess):
    cases = release.split(split)
    clinical, dermoscopy = load_arrays(cases, preprocess)
    return clinical, dermoscopy, np.array([c.labels for c in cases]), [c.case_id for c in cases]


def _openvino(name: str, model, precision: str = "int8", note: str = "", kept=()) -> Method:
    """Scored and timed as the runtime compiles a bundle: static shapes, at the scorer's batch and at batch 1."""
    model = openvino_export.finalize(model) if precision == "int8" else model
    request = compile_static(ov.Core(), model, 1, GATED_PRECISION[precision]).create_infer_request()
    return Method(name, "openvino", openvino_export.Scorer(model, precision),
                  lambda c, d: request.infer({"clinical": c, "dermoscopy": d}), list(kept), note=note)


def _onnx(name: str, graph: Path, kept=(), note: str = "") -> Method:
    session = onnxruntime_session(graph)
    return Method(name, "onnxruntime", lambda c, d: run_onnx(session, c, d),
                  lambda c, d: session.run(None, {"clinical": c, "dermoscopy": d}), list(kept), note=note)


def _timed(build: Callable[[], Method]) -> Method:
    started = time.perf_counter()
    method = build()
    method.minutes = method.minutes or (time.perf_counter() - started) / 60     # QAT: its training's
    return method


def build_methods(run: Path, data: Path, work: Path, accuracy_control: bool, log,
                  qat_settings: list[tuple[str, "qat.QatSettings"]] = ()) -> tuple[list[Method], dict]:
    import nncf
    model = load_model(run / "model.safetensors").eval()
    preprocess = model.cfg.preprocess()
    release = read_release(data)
    calib = build_calibration_set(release, preprocess)
    vc, vd, vl, vid = _arrays(release, "valid", preprocess)
    # the decisions read as the device reads them (the run's fitted seven-point reading), as the export does
    clinical = stored_calibration(read_metadata(run / "model.safetensors"))
    valid = int8_gate.ValidSplit((vc, vd), vl, vid, run_torch(model, vc, vd), GateSettings(), clinical)
    onnx_fp32 = export_onnx(model, work / "model.onnx")
    fp32 = openvino_export.convert(onnx_fp32)
    transformer = openvino_export.has_attention(model)          # the exporter's rule
    quiet = lambda message: None          # noqa: E731 - the search's own log, not wanted in the table

    def nncf_method(name: str, **options) -> Method:
        return _openvino(name, openvino_export.quantize_int8(fp32.clone(), calib, transformer, **options))

    def run_ov(m):
        return openvino_export.Scorer(openvino_export.finalize(m), "int8")

    def ov_search(control: bool, as_transformer: bool) -> Method:
        kind = "transformer type" if as_transformer else "default type"
        name = f"NNCF accuracy control (agreement), {kind}" if control else f"NNCF, {kind}, blocks in float (search)"
        plain = openvino_export.quantize_int8(fp32.clone(), calib, as_transformer)
        control_fn = (lambda: openvino_export.quantize_for_agreement(fp32.clone(), calib, as_transformer, valid)
                      ) if control else None
        int8, attempts, _ = int8_gate.search_openvino(
            fp32, plain, lambda m, blocks: openvino_export.keep_in_float(m, fp32, blocks), run_ov,
            control_fn, valid, quiet)
        tried = attempts[-1]
        if int8 is None:
            return Method(name, "openvino", note=f"refused: {tried.method}: {tried.result['reasons'][0]}")
        return _openvino(name, int8, note=tried.method, kept=tried.kept_in_float)

    def qdq_method(name: str, quantizer: QdqQuantizer) -> Method:
        return _onnx(name, quantizer.quantize(work / f"qdq-{quantizer.method.name.lower()}.onnx"))

    def qdq_search() -> Method:
        quantizer = QdqQuantizer(onnx_fp32, calib, work / "search")
        graph, attempts, _ = int8_gate.search_jetson(
            quantizer, work / "search.onnx", lambda g: (lambda c, d, s=onnxruntime_session(g): run_onnx(s, c, d)),
            valid, quiet)
        tried = attempts[-1]
        if graph is None:
            return Method("Q/DQ, blocks in float (search)", "onnxruntime",
                          note=f"refused: {tried.method}: {tried.result['reasons'][0]}")
        return _onnx("Q/DQ, blocks in float (search)", graph, tried.kept_in_float, note=tried.method)

    students: dict[str, qat.QatGraphs] = {}

    def qat_method(settings: qat.QatSettings, runtime: str, label: str = "") -> Method:
        """One student per settings, trained on first use; its training minutes on both its rows."""
        key = repr(settings)
        if key not in students:
            job = qat.QatJob(run / "model.safetensors", data, work / f"qat-{len(students)}", settings)
            students[key] = qat.qat_graphs(job, calib, transformer, quiet)
        graphs = students[key]
        in_float = graphs.record["in_float"]
        name = "QAT distilled from FP32" + (f", {' and '.join(in_float)} in float" if in_float else "") \
            + (f", {label}" if label else "")
        method = (_openvino(name, openvino_export.read(graphs.openvino_xml), kept=in_float) if runtime == "openvino"
                  else _onnx(f"Q/DQ {name}", graphs.qdq_onnx, in_float))
        method.minutes = graphs.record["minutes"]
        return method

    # the export's student keeps encoders under its light share in float; where none is that light (`edge`:
    # both EfficientNet-Lites are quantized) it is the every-encoder student, trained and listed once
    every_encoder = qat.QatSettings(light_share=0.0)
    students_by_default = [every_encoder] + ([qat.QatSettings()]
                                             if qat.light_encoders(model, qat.QatSettings().light_share) else [])

    from onnxruntime.quantization import CalibrationMethod
    kind = "transformer type" if transformer else "default type"       # what the export uses
    builders = [
        lambda: _openvino("OpenVINO FP32", fp32, "fp32"),
        lambda: nncf_method("NNCF PTQ, default type", model_type=None),
        lambda: nncf_method("NNCF PTQ, transformer type (SmoothQuant)", model_type=nncf.ModelType.TRANSFORMER),
        lambda: nncf_method(f"NNCF PTQ, {kind}, full bias correction", fast_bias_correction=False),
        lambda: nncf_method(f"NNCF PTQ, {kind}, symmetric activations", preset=nncf.QuantizationPreset.PERFORMANCE),
        lambda: ov_search(False, as_transformer=False),
        lambda: ov_search(False, as_transformer=True),
        *([lambda: ov_search(True, as_transformer=transformer)] if accuracy_control else []),
        *[lambda s=s: qat_method(s, "openvino") for s in students_by_default],
        *[lambda s=s, label=label: qat_method(s, "openvino", label) for label, s in qat_settings],
        lambda: _onnx("onnxruntime FP32", onnx_fp32),
        lambda: qdq_method("Q/DQ plain PTQ (MinMax)", QdqQuantizer(onnx_fp32, calib, work / "minmax")),
        lambda: qdq_method("Q/DQ, percentile calibration", QdqQuantizer(onnx_fp32, calib, work / "percentile",
                                                                          CalibrationMethod.Percentile)),
        qdq_search,
        *[lambda s=s: qat_method(s, "onnxruntime") for s in students_by_default],
        # TensorRT takes signed int8 only: an unsigned student has no Q/DQ row
        *[lambda s=s, label=label: qat_method(s, "onnxruntime", label) for label, s in qat_settings if s.signed],
    ]
    methods = []
    for build in builders:
        method = _timed(build)
        log(f"built {method.name} in {method.minutes:.1f} min" + (f" ({method.note})" if method.note else ""))
        methods.append(method)
    tc, td, tl, tid = _arrays(release, "test", preprocess)
    context = {"valid": valid, "test": (tc, td, tl, tid, run_torch(model, tc, td)), "calibration": len(calib),
               "single": (vc[:1], vd[:1])}
    return methods, context


def time_methods(methods: list[Method], single, warmup: int, runs: int, rounds: int) -> None:
    for method in methods:
        for _ in range(warmup if method.single else 0):
            method.single(*single)
    for _ in range(rounds):
        for method in methods:
            if method.single is None:
                continue
            for _ in range(runs):
                started = time.perf_counter()
                method.single(*single)
                method.times_ms.append(1000 * (time.perf_counter() - started))


def score(methods: list[Method], context: dict) -> list[dict]:
    valid = context["valid"]
    tc, td, tl, tid, reference = context["test"]
    fp32_ms = {m.runtime: float(np.median(m.times_ms)) for m in methods if m.name in FP32_REFERENCES}
    rows = []
    for m in methods:
        row = {"method": m.name, "runtime": m.runtime, "kept_in_float": m.kept_in_float, "minutes": m.minutes,
               "note": m.note}
        if m.predict is not None:
            on_valid = int8_gate.judge_on_valid(valid, int8_gate.Attempt(m.name), m.predict(*valid.inputs),
                                                lambda message: None).result
            on_test = judge(reference, m.predict(tc, td), tl, tid, GateSettings(), valid.calibration)
            ms = float(np.median(m.times_ms))
            row.update({"valid_verdict": on_valid["verdict"], "valid_reasons": on_valid["reasons"],
                        "valid_flips_percent": {k: f["rate_percent"] for k, f in on_valid["flips"].items()},
                        "valid_confident_flips": {k: f["confident_flips"] for k, f in on_valid["flips"].items()},
                        "test_auc_drop_points": on_test["auc"]["drop_points"],
                        "test_ci_points": on_test["auc"]["ci_points"],
                        "test_flips": {k: {x: f[x] for x in ("flips", "cases", "rate_percent", "upper_bound_percent",
                                                             "toward_truth", "away_from_truth", "confident_flips")}
                                       for k, f in on_test["flips"].items()},
                        "test_melanoma_sensitivity": on_test["melanoma_sensitivity"],
                        "test_verdict": on_test["verdict"], "median_ms": ms,
                        "speedup_vs_fp32": fp32_ms[m.runtime] / ms})
        rows.append(row)
    return rows


def _short(path: str) -> str:
    """The last two parts of a path: where a run sits on this machine says nothing to a reader."""
    return "/".join(Path(path).parts[-2:])


def markdown(result: dict) -> str:
    host = result["host"]
    lines = ["# INT8 methods: decisions kept, at what speed", "",
             f"Run `{_short(result['run'])}` on `{_short(result['data'])}`; {result['calibration']} calibration cases "
             "(train split); "
             f"valid {result['valid_cases']} cases, test {result['test_cases']} cases. {host['cpu']}, "
             f"{host['cores']} cores (int8 instructions: {', '.join(host['int8_instructions']) or 'none'}). "
             "Valid: the export's gate (AUC margin 1 point, at most 2 % of cases flipped, 1 % to be chosen). "
             "Test: against PyTorch FP32, AUC drop with its paired-bootstrap 95 % interval, flips with their one-sided 95 % upper bound. "
             + ("Clear calls: flips of decisions the FP32 model won by more than 0.1. "
                if any("valid_confident_flips" in r for r in result["methods"]) else "") +
             f"Latency: model call, batch 1, median of {result['timed_runs']} runs per method, round-robin.", "",
             "| method | runtime | in float | valid verdict (flips: diagnosis / seven-point) | test AUC drop [95 % CI] "
             "| test diagnosis flips | test seven-point flips | melanomas referred | ms | vs FP32 | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["methods"]:
        if "median_ms" not in r:
            lines.append(f"| {r['method']} | {r['runtime']} | - | {r['note']} | - | - | - | - | - | - | "
                         f"{r['minutes']:.1f} |")
            continue
        v, fl, mel = r["valid_flips_percent"], r["test_flips"], r["test_melanoma_sensitivity"]

        def flip(key):
            f = fl[key]
            clear = f", {f['confident_flips']} clear" if "confident_flips" in f else ""    # older results: none
            return f"{f['rate_percent']:.1f} % ({f['flips']}{clear}; at most {f['upper_bound_percent']:.1f} %)"
        clear = r.get("valid_confident_flips")
        clear = f"; clear calls {clear['diagnosis']} / {clear['seven_point']}" if clear else ""
        encoders = any("/" not in k for k in r["kept_in_float"])      # QAT keeps whole encoders, not blocks
        kept = (", ".join(r["kept_in_float"]) if encoders
                else f"{len(r['kept_in_float'])} block(s)" if r["kept_in_float"] else "-")
        melanoma = ("-" if not mel["melanomas"] else
                    f"{mel['reference_percent']:.1f} -> {mel['variant_percent']:.1f} %")
        lines.append(f"| {r['method']} | {r['runtime']} | {kept} | {r['valid_verdict']} ({v['diagnosis']:.1f} / "
                     f"{v['seven_point']:.1f} %{clear}) | {r['test_auc_drop_points']:.2f} [{r['test_ci_points'][0]:.2f}, "
                     f"{r['test_ci_points'][1]:.2f}] | {flip('diagnosis')} | {flip('seven_point')} | {melanoma} | "
                     f"{r['median_ms']:.2f} | {r['speedup_vs_fp32']:.2f}x | {r['minutes']:.1f} |")
    passing = [r for r in result["methods"] if r.get("valid_verdict") == "pass" and r["method"] not in FP32_REFERENCES]
    fastest = min(passing, key=lambda r: r["median_ms"], default=None)
    lines += ["", "Fastest INT8 method passing on valid: "
              + (f"**{fastest['method']}** ({fastest['median_ms']:.2f} ms, {fastest['speedup_vs_fp32']:.2f}x its "
                 "runtime's FP32)." if fastest else "**none**.")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="A finished run folder.")
    parser.add_argument("--data", type=Path, help="Its release.")
    parser.add_argument("--accuracy-control", action="store_true", help="Also NNCF accuracy control (minutes).")
    parser.add_argument("--runs", type=int, default=40, help="Timed runs per method and round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--qat-setting", action="append", default=[],
                        help="LABEL=FIELD:VALUE,... over QatSettings: one more student (repeatable).")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--name", default="int8-methods", help="The results' file stem (default: int8-methods).")
    parser.add_argument("--render", action="store_true", help="Only rewrite NAME.md from NAME.json.")
    args = parser.parse_args()
    json_path, md_path = args.results / f"{args.name}.json", args.results / f"{args.name}.md"
    if args.render:
        try:     # the table is made before anything is written: a bad file leaves NAME.md as it was
            table = markdown(read_result(json_path))
        except ConfigError as error:
            parser.exit(1, f"error: {error}\n")
        except (KeyError, IndexError, TypeError) as error:
            parser.exit(1, f"error: {json_path}: not an int8_methods result ({type(error).__name__}: {error})\n")
        md_path.write_text(table)
        return
    if args.run is None or args.data is None:
        parser.error("--run and --data are required (unless --render)")
    try:     # every setting checked before anything is built
        qat_settings = [parse_setting(text, "--qat-setting") for text in args.qat_setting]
    except ConfigError as error:
        parser.exit(1, f"error: {error}\n")
    with tempfile.TemporaryDirectory(prefix="edgederm-int8-methods-") as tmp:
        methods, context = build_methods(args.run, args.data, Path(tmp), args.accuracy_control, print, qat_settings)
        time_methods(methods, context["single"], warmup=5, runs=args.runs, rounds=args.rounds)
        rows = score(methods, context)
    result = {"run": str(args.run), "data": str(args.data), "host": host_facts(), "calibration": context["calibration"],
              "valid_cases": len(context["valid"].labels), "test_cases": len(context["test"][2]),
              "timed_runs": args.runs * args.rounds, "methods": rows}
    text = markdown(result)
    args.results.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
