"""What `ONEDNN_MAX_CPU_ISA` makes a newer x86 CPU do like an older one, measured on this CPU.

The suite's verdicts depend on the CPU class (docs/device.md, "x86 CPU classes"): OpenVINO's default
float precision, the int8 kernels, and torch's float sums. A developer on a newer CPU reproduces an
older CPU's result by capping oneDNN's instruction set; this script says which of the three the cap
reaches. For each value (and none), in a fresh process each (the variable is read at start-up):

- OpenVINO's default INFERENCE_PRECISION_HINT and its OPTIMIZATION_CAPABILITIES;
- an OpenVINO INT8 bundle's probabilities on the first 64 valid cases, compared with the uncapped
  run's (the int8 kernels changed or not);
- a torch convolution's output bits, compared with the uncapped run's (float training sums).

    python benchmarks/dev/cpu_isa.py --bundle quickstart/exports/tiny-openvino-int8 \\
        --data quickstart/synth --out benchmarks/results/cpu-isa-intel-xeon-amx

writes OUT.json and OUT.md (the table docs/device.md includes) and prints the table.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

CAPS = ["", "AVX2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX512_CORE_AMX"]


def measure(bundle: Path, data: Path, probabilities_out: Path) -> dict:
    """One process's facts (ONEDNN_MAX_CPU_ISA as it was started with)."""
    import numpy as np
    import openvino as ov
    import torch

    from edgederm.data.inputs import load_arrays
    from edgederm.data.release import read_release
    from edgederm.runtime import load_bundle
    core = ov.Core()
    predictor = load_bundle(bundle)
    cases = read_release(data).split("valid")[:64]
    np.save(probabilities_out, predictor.run_batched(*load_arrays(cases, predictor.preprocess,
                                                                  predictor.input_names)))
    torch.manual_seed(0)
    with torch.no_grad():
        out = torch.nn.Conv2d(32, 64, 3)(torch.randn(4, 32, 56, 56))
    return {"default_precision": core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name(),
            "capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
            "int8_bundle_ran_float_ops_in": predictor.float_precision,
            "torch_conv_sha256": hashlib.sha256(out.numpy().tobytes()).hexdigest()}


def table(record: dict) -> str:
    lines = [f"{record['cpu']} (int8 instructions: {', '.join(record['int8_instructions']) or 'none'}); INT8 bundle "
             f"`{record['bundle']}`, {record['cases']} valid cases, each cap in a fresh process.", "",
             "| ONEDNN_MAX_CPU_ISA | OpenVINO default precision | BF16 / FP16 capability | INT8 outputs vs uncapped "
             "(max abs diff) | torch conv bits vs uncapped |", "|---|---|---|---|---|"]
    for row in record["rows"]:
        caps = "/".join(c for c in ("BF16", "FP16") if c in row["capabilities"]) or "none"
        lines.append(f"| {row['cap'] or '(unset)'} | {row['default_precision']} | {caps} | "
                     f"{row['int8_max_abs_diff']:.2g} | {'same' if row['torch_same'] else 'different'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="An OpenVINO INT8 bundle.")
    parser.add_argument("--data", type=Path, required=True, help="The release its valid cases come from.")
    parser.add_argument("--out", type=Path, required=True, help="Writes OUT.json and OUT.md.")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)    # the per-cap child process
    args = parser.parse_args()
    work = args.out.parent / f".{args.out.name}-work"
    if args.one:
        print(json.dumps(measure(args.bundle, args.data, work / f"{os.environ.get('ONEDNN_MAX_CPU_ISA', '')}.npy")))
        return 0
    import numpy as np

    from edgederm.benchmarks.host import host_facts
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for cap in CAPS:
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"} | ({"ONEDNN_MAX_CPU_ISA": cap} if cap else {})
        done = subprocess.run([sys.executable, __file__, "--bundle", str(args.bundle), "--data", str(args.data),
                               "--out", str(args.out), "--one"], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{cap}: failed: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            return 1
        rows.append({"cap": cap, **json.loads(done.stdout.strip().splitlines()[-1])})
    uncapped = np.load(work / ".npy")
    for row in rows:
        row["int8_max_abs_diff"] = float(np.abs(np.load(work / f"{row['cap']}.npy") - uncapped).max())
        row["torch_same"] = row["torch_conv_sha256"] == rows[0]["torch_conv_sha256"]
    for path in work.iterdir():
        path.unlink()
    work.rmdir()
    facts = host_facts()
    record = {"cpu": facts["cpu"], "int8_instructions": facts["int8_instructions"], "bundle": args.bundle.name,
              "cases": 64, "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(record) + "\n")
    print(table(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
