"""What the benchmark scripts share: bundles exported once per --workdir and
reused by later runs of the same script."""
from __future__ import annotations

import os
from pathlib import Path

from edgederm.data.synth import write_synthetic_release
from edgederm.export.exporter import ExportRequest, export


def ensure_bundles(run: Path, data: Path, out: Path, targets: dict[str, str], **request) -> dict[str, Path]:
    """Export `run` for every target -> "fp32,int8" precisions not already in `out`; {"openvino-int8": path}."""
    bundles = {}
    for target, precisions in targets.items():
        wanted = {p: out / f"{run.name}-{target}-{p}" for p in precisions.split(",")}
        missing = ",".join(p for p, path in wanted.items() if not path.is_dir())
        if missing:
            # the INT8 gate's limits mean nothing to (and are refused for) FP32-only exports
            gate = ("max_auc_drop", "max_flip_rate")
            options = {k: v for k, v in request.items() if k not in gate or "int8" in missing}
            export(ExportRequest(run=run, target=target, precisions=missing, data=data, out=out, **options))
        bundles.update({f"{target}-{p}": path for p, path in wanted.items()})
    return bundles


def synthetic_release(work: Path, cases: int) -> Path:
    """WORK/synth: the synthetic release (seed 0), written on the first run."""
    data = work / "synth"
    if not data.exists():
        write_synthetic_release(data, cases=cases, seed=0, workers=min(2, os.cpu_count() or 1))
    return data
