"""Parameters and GFLOPs of every preset, as `edgederm model summary` counts them,
beside the paper's parameter counts; writes benchmarks/results/presets.json
(docs/model.md's presets table is generated from it by readme_figures.py).

    python benchmarks/dev/presets.py

Random weights: counts do not depend on them. About a minute on a 2-core CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgederm.models import create_model
from edgederm.presets import get_preset, preset_names
from edgederm.models.summary import summarize

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main() -> None:
    rows = []
    for name in preset_names():
        cfg = get_preset(name).model
        total = summarize(create_model(cfg))["total"]
        rows.append({"preset": name, "clinical_encoder": cfg.clinical_encoder, "derm_encoder": cfg.derm_encoder,
                     "fusion": cfg.fusion, "fusion_features": cfg.fusion_features,
                     "shared_encoder": cfg.shared_encoder, "architecture": cfg.architecture,
                     "img_size": cfg.img_size, "params_m": total["params_m"], "gflops": total["gflops"],
                     "paper_params_m": get_preset(name).paper_params_m})
        print(f"{name:<8} {total['params_m']:6.2f} M  {total['gflops']:6.2f} GFLOPs")
    (RESULTS / "presets.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {RESULTS / 'presets.json'}")


if __name__ == "__main__":
    main()
